"""Make samples/digits_sd/: a tiny Stable Diffusion pipeline trained from scratch on scikit-learn's digits.

    python samples/make_digits_sd.py --out OUT                    # one run, under 5 minutes on 2 idle cores
                                                                  # (how samples/digits_sd was made)
    python samples/make_digits_sd.py --init OUT --vae-steps 0 --unet-steps 500 --out OTHER
                                                                  # continue the UNet from a saved folder

The real diffusers and transformers classes at toy sizes: AutoencoderKL (32x32 RGB <-> 4x8x8 latent),
UNet2DConditionModel on the latent, CLIPTextModel with a small local CLIPTokenizer, a DPM-Solver++ scheduler.
Images are dark ink on white paper; captions are "a handwritten digit three", dropped (to "") 10% of the time
so that classifier-free guidance works. Stages, each timed (CPU and wall) and seeded:

    1. tokenizer: build_tokenizer(out_dir), a byte-level BPE vocab in which any text tokenizes without <unk>
    2. VAE: reconstruction + a small KL, on the digits plus bold / thin / italic / mirrored variants, so the
       latent space can hold the shape styles that adapters will learn (the paper is always white)
    3. UNet + text encoder (at a third of the rate): epsilon prediction on the SD 1.x noise schedule, min-SNR
       weighting, AdamW with a cosine learning rate, a moving average of the weights
    4. save: StableDiffusionPipeline.save_pretrained in float16 safetensors, safety checker None

`StableDiffusionPipeline.from_pretrained(out)` opens the folder offline; pass torch_dtype=torch.float32 on CPU.
docs/diffusion.md records the run that made the shipped folder, and what each setting was measured to be worth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digit_styles import STYLES  # noqa: E402
from digits import DIGIT_WORDS, digit_caption, paper_digits  # noqa: E402

MAX_LENGTH = 24  # tokens including <|startoftext|> and <|endoftext|>

# Whole words that become single tokens; any other text still tokenizes, falling back to bytes.
WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "by", "to", "is", "at", "for",
    "handwritten", "digit", "digits", "number", "numeral", "written", "drawn", "drawing", "picture", "photo",
    "image", "sketch", "style", "sks", "zwx", "ohwx", "bold", "thick", "thin", "italic", "slanted", "mirrored",
    "mirror", "flipped", "heavy", "light", "upright", "plain", "regular", "ink", "pen", "paper", "white", "black",
    "dark", "neat", "messy", "small", "large", "big", "my", "hand", "font",
) + DIGIT_WORDS

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, sample_size=32, latent_channels=4, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64), norm_num_groups=8,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64), norm_num_groups=16, cross_attention_dim=64, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   max_position_embeddings=MAX_LENGTH, projection_dim=64, hidden_act="quick_gelu")
# The SD 1.x training schedule: 1000 steps, betas scaled_linear from 0.00085 to 0.012, epsilon prediction.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table (the alphabet byte-level BPE works in)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe(word: str, ranks: dict[str, int]) -> list[str]:
    """Byte-pair encode one ASCII word as CLIP does: "</w>" on the last symbol, then the best-ranked pair first."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = [(ranks.get(f"{a} {b}", len(ranks)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_tokenizer(out_dir: str | Path, words: tuple[str, ...] = WORDS, max_length: int = MAX_LENGTH):
    """Write vocab.json + merges.txt for a small CLIP BPE into out_dir and return the CLIPTokenizer saved there.

    Vocabulary: <|startoftext|>, <|endoftext|>, every one of the 256 byte characters alone and with the
    end-of-word mark "</w>" (so any text, ASCII or not, tokenizes without <unk>), then for each word in `words`
    the merges that join it into one token "word</w>" (intermediate pieces become tokens too).
    """
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        # Split the word with the merges so far, then join the pieces left to right with new, lower-priority
        # merges: every earlier word still finishes as one token first, so each listed word ends as one token.
        pieces = _bpe(word, {m: r for r, m in enumerate(merges)})
        left = pieces[0]
        for right in pieces[1:]:
            merges.append(f"{left} {right}")
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=max_length)
    tokenizer.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)


@contextmanager
def stage(name: str, log: dict) -> Iterator[None]:
    """Time a stage in wall and process-CPU seconds (CPU > wall means several threads were busy)."""
    wall, cpu = time.perf_counter(), time.process_time()
    print(f"== {name}", flush=True)
    yield
    log[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}
    print(f"   {name}: {log[name]['wall_s']} s wall, {log[name]['cpu_s']} s CPU", flush=True)


def report(bar, name: str, step: int, steps: int, loss: torch.Tensor, progress: bool) -> None:
    """Loss on the bar; without a terminal, one line per tenth of the steps."""
    if progress:
        bar.set_postfix(loss=f"{loss.item():.4f}")
    elif (step + 1) % max(1, steps // 10) == 0:
        print(f"   {name} step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)


def vae_images(seed: int) -> torch.Tensor:
    """Training images for the VAE in [-1, 1], [6N, 3, 32, 32]: the digits plain, bold, thin, italic (+-15 deg)
    and mirrored (plain twice over), so adapters that learn those shapes find them in the latent space."""
    paper, _ = paper_digits(32)
    rng = np.random.default_rng(seed)
    variants = [paper, paper, STYLES["bold"](paper), STYLES["thin"](paper), STYLES["mirror"](paper),
                STYLES["italic"](paper, angle=float(rng.choice([-15.0, 15.0])))]
    grey = torch.from_numpy(np.concatenate(variants)).float()
    return (grey * 2 - 1)[:, None].expand(-1, 3, -1, -1).contiguous()


def train_vae(steps: int, batch: int, lr: float, seed: int, progress: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    data = vae_images(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="vae", disable=not progress)
    for step in bar:
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        # L1 keeps strokes sharp; the KL (per latent element, tiny) keeps the latent smooth and bounded.
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-4 * posterior.kl().mean() / 256
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        report(bar, "vae", step, steps, loss, progress)
    vae.eval()
    return vae


@torch.no_grad()
def encode_digits(vae) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior means and stds of the plain digits, [N, 4, 8, 8] each, and labels [N]."""
    paper, labels = paper_digits(32)
    x = (torch.from_numpy(paper) * 2 - 1)[:, None].expand(-1, 3, -1, -1)
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.std, torch.from_numpy(labels)


@torch.no_grad()
def check_vae(vae, mean: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean absolute error of the plain digits decoded from their posterior means (from encode_digits), and how
    often the digit scorer still reads the right digit in the reconstruction."""
    from digit_scorer import classify

    paper, _ = paper_digits(32)
    recon = ((vae.decode(mean).sample + 1) / 2).clamp(0, 1)
    grey = recon.mean(1).numpy()
    return {"mae": round(float(np.abs(grey - paper).mean()), 4),
            "scorer_accuracy": round(float((classify(grey) == labels.numpy()).mean()), 4)}


def train_unet(vae, tokenizer, steps: int, batch: int, lr: float, drop: float, seed: int, progress: bool,
               init: Path | None = None, snr_gamma: float = 0.0, ema: float = 0.0, text_lr: float = 0.0,
               digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               channels: tuple[int, ...] | None = None):
    """Train the UNet and, when text_lr > 0, the text encoder on the plain digits' latents (`digits`: what
    encode_digits(vae) returns, when already computed)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    mean, std, labels = digits if digits is not None else encode_digits(vae)
    if init is None:
        scaling = float(1.0 / mean.std())  # unit-variance latents, as SD's scaling_factor does
        vae.register_to_config(scaling_factor=scaling)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG))
        unet = UNet2DConditionModel(**{**UNET_CONFIG, **({"block_out_channels": tuple(channels)} if channels else {})})
    else:
        scaling = vae.config.scaling_factor
        text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder", dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32)
    noise_schedule = DDPMScheduler(**SCHEDULE)
    captions = [digit_caption(d) for d in range(10)] + [""]
    ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids  # [11, L]; row 10 is the empty caption
    # The text encoder learns at its own, lower rate. At the UNet's rate it is a moving target and prompts were
    # learnt several times more slowly; frozen at its random start, the UNet learnt fast but read the digit from
    # features that any extra word scrambles ("... three in bold style" drew a three 38% of the time).
    text_encoder.requires_grad_(text_lr > 0)
    groups = [{"params": list(unet.parameters()), "lr": lr}]
    if text_lr > 0:
        groups.append({"params": list(text_encoder.parameters()), "lr": text_lr})
    params = [p for group in groups for p in group["params"]]
    with torch.no_grad():
        fixed_text = None if text_lr > 0 else text_encoder(ids).last_hidden_state  # [11, L, 64]
    opt = torch.optim.AdamW(groups, weight_decay=0.01, fused=True)  # one kernel, not a Python loop per tensor
    warmup = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed + 1)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    # Min-SNR-gamma weighting (Hang et al. 2023): the easy, low-noise timesteps stop dominating the gradient.
    weight = snr.clamp(max=snr_gamma) / snr if snr_gamma > 0 else torch.ones_like(snr)
    averaged = [p.detach().clone() for p in params] if ema > 0 else None
    bar = tqdm(range(steps), desc="unet", disable=not progress)
    for step in bar:
        pick = torch.randint(len(mean), (batch,), generator=gen)
        z0 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * scaling  # [B, 4, 8, 8]
        caption = torch.where(torch.rand(batch, generator=gen) < drop, 10, labels[pick])
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        # Only 11 distinct captions: encode each once (per step while the encoder learns) and index.
        text = fixed_text if fixed_text is not None else text_encoder(ids).last_hidden_state
        # index_select, not text[caption]: the backward of advanced indexing accumulates in a thread-dependent
        # order on CPU, so with 2 threads the weights differed in the last bits from run to run (measured).
        prediction = unet(zt, t, encoder_hidden_states=text.index_select(0, caption)).sample
        loss = ((prediction - noise).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if averaged is not None:
            # An exponential moving average of the weights, its decay warmed up so the random start fades fast.
            keep = min(ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for avg, p in zip(averaged, params):
                    avg.lerp_(p, 1 - keep)
        report(bar, "unet", step, steps, loss, progress)
    if averaged is not None:
        with torch.no_grad():
            for p, avg in zip(params, averaged):
                p.copy_(avg)
    return unet.eval(), text_encoder.eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="folder to write; required, so that a run never replaces samples/digits_sd by accident")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=200)
    p.add_argument("--unet-steps", type=int, default=1300)
    p.add_argument("--vae-batch", type=int, default=8,
                   help="VAE batch (measured: 8 reaches batch 32's reconstruction error in half the time)")
    p.add_argument("--batch", type=int, default=32, help="UNet batch (measured: more, smaller steps learn faster)")
    p.add_argument("--vae-lr", type=float, default=3e-3)
    p.add_argument("--unet-lr", type=float, default=3e-3)
    p.add_argument("--text-lr", type=float, default=1e-3,
                   help="text encoder learning rate, a third of the UNet's (measured: at the UNet's rate prompts "
                        "are learnt slowly; at 0 any extra word in a prompt confuses the digit); 0 freezes it")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma loss weighting; 0 turns it off")
    p.add_argument("--ema", type=float, default=0.99, help="decay of the trained weights' moving average; 0: none")
    p.add_argument("--drop", type=float, default=0.1, help="fraction of captions replaced by '' (for CFG)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads: 1 is fastest when other jobs share the cores (no barrier waits); a given "
                        "count repeats bit for bit")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from a saved folder: its VAE (with --vae-steps 0), UNet and text encoder")
    p.add_argument("--unet-channels", type=int, nargs="+",
                   help="UNet block widths (default 32 64); e.g. 64 128 for a wider base to test recipes on")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="take the VAE from this saved folder instead of training one (a fresh UNet on it)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def forget_origin(folder: Path) -> None:
    """Drop the `_name_or_path` a component loaded with --init keeps: a shipped folder names no local path."""
    for config in folder.glob("*/config.json"):
        data = json.loads(config.read_text())
        if data.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> Path:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    started = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress and sys.stderr.isatty()
    log: dict = {}
    with stage("tokenizer", log):
        tokenizer = build_tokenizer(args.out / "tokenizer")
    with stage("vae", log):
        if args.vae_from is not None or (args.init is not None and args.vae_steps == 0):
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained((args.vae_from or args.init) / "vae", torch_dtype=torch.float32).eval()
        else:
            vae = train_vae(args.vae_steps, args.vae_batch, args.vae_lr, args.seed, progress)
    with stage("vae check", log):
        digits = encode_digits(vae)
        log["vae_reconstruction"] = check_vae(vae, digits[0], digits[2])
        print(f"   plain digits through the VAE: {log['vae_reconstruction']}", flush=True)
    with stage("unet", log):
        unet, text_encoder = train_unet(vae, tokenizer, args.unet_steps, args.batch, args.unet_lr, args.drop,
                                        args.seed, progress, args.init, args.snr_gamma, args.ema, args.text_lr, digits,
                                        args.unet_channels)
    with stage("save", log):
        scheduler = DPMSolverMultistepScheduler(**SCHEDULE)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.to(torch.float16)  # halves the folder; from_pretrained(torch_dtype=torch.float32) restores fp32
        pipe.save_pretrained(args.out, safe_serialization=True)
        forget_origin(args.out)
    sizes = {name: n_params(m) for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))}
    folder = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    settings = {k: str(v) for k, v in vars(args).items() if k != "out"}
    total = round(time.perf_counter() - started, 1)  # after the imports at the top of this file
    summary = {"params": sizes, "stages": log, "total_wall_s": total, "folder_bytes": folder, "args": settings}
    (args.out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return args.out


if __name__ == "__main__":
    main()

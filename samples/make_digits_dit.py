"""Make samples/digits_dit/: a tiny Stable Diffusion 3 pipeline (a real SD3Transformer2DModel, trained here from
scratch on scikit-learn's digits) around the shipped digits VAE, text encoder and tokenizer.

    python samples/make_digits_dit.py --out OUT          # one run, under 5 minutes on 2 idle cores

`StableDiffusion3Pipeline.from_pretrained(out, torch_dtype=torch.float32)` opens the folder offline:

- transformer: SD3Transformer2DModel on the VAE's 4x8x8 latent, patch 2 (16 image tokens), joint attention;
- vae: samples/digits_sd's AutoencoderKL, with the `shift_factor` SD3 pipelines need (the latent mean) and a
  scaling factor for unit-variance latents after the shift;
- text_encoder, text_encoder_2: CLIPTextModelWithProjection, both samples/digits_sd's trained text encoder with
  a seeded projection (frozen); tokenizer, tokenizer_2: its CLIP tokenizer;
- text_encoder_3, tokenizer_3: no T5 knowledge, a placeholder that returns zeros (see t5_placeholder): the 256
  zero tokens SD3 pipelines give in T5's place when it is dropped;
- scheduler: FlowMatchEulerDiscreteScheduler, shift 1 (8x8 latents need no shift towards noise).

Training: the rectified-flow objective of vislora.diffusion.flow (velocity target, logit-normal timesteps),
captions "a handwritten digit three" dropped to "" 10% of the time (classifier-free guidance), AdamW with a
cosine rate and a moving average of the weights. The 256 zero tokens stay identical through every layer (each
token's path is per-token except attention, where identical keys and values act as one key whose score counts
256 times), so training gives the transformer one such token with log(256) added to its attention score: the
same function as the pipeline's 280-token context, checked at start-up, at a seventh of the cost.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits import digit_caption  # noqa: E402
from make_digits_sd import check_vae, encode_digits, forget_origin, n_params, report, stage  # noqa: E402

T5_TOKENS = 256  # the zero tokens StableDiffusion3Pipeline appends without T5 (its default max_sequence_length)
TRANSFORMER_CONFIG = dict(
    sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=128, caption_projection_dim=64, pooled_projection_dim=128,
    pos_embed_max_size=8, qk_norm="rms_norm",
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


class RepeatedLastKey:
    """Joint attention (image tokens, then context tokens) in which the last context token stands for `repeats`
    identical tokens: its attention score gains log(repeats). Same projections as diffusers' joint processor."""

    def __init__(self, repeats: int) -> None:
        self.log_repeats = math.log(repeats)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n = hidden_states.shape[:2]

        def heads(x: torch.Tensor, norm) -> torch.Tensor:
            x = x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)  # [B, h, L, d]
            return norm(x) if norm is not None else x

        q = torch.cat([heads(attn.to_q(hidden_states), attn.norm_q),
                       heads(attn.add_q_proj(encoder_hidden_states), attn.norm_added_q)], dim=2)
        k = torch.cat([heads(attn.to_k(hidden_states), attn.norm_k),
                       heads(attn.add_k_proj(encoder_hidden_states), attn.norm_added_k)], dim=2)
        v = torch.cat([heads(attn.to_v(hidden_states), None), heads(attn.add_v_proj(encoder_hidden_states), None)],
                      dim=2)
        bias = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
        bias[-1] = self.log_repeats
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(1, 1, 1, -1)).transpose(1, 2).flatten(2)  # [B, L, h d]
        image, context = out[:, :n], out[:, n:]
        context = None if attn.context_pre_only else attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


def load_parts(source: Path, seed: int):
    """samples/digits_sd's VAE, tokenizer and text encoder (as CLIPTextModelWithProjection, seeded projection)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    vae = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    torch.manual_seed(seed)
    hf_logging.set_verbosity_error()  # "text_projection newly initialized": it is, on purpose
    text_encoder = CLIPTextModelWithProjection.from_pretrained(source / "text_encoder", dtype=torch.float32).eval()
    hf_logging.set_verbosity_warning()
    text_encoder.requires_grad_(False)
    return vae, tokenizer, text_encoder


@torch.no_grad()
def caption_embeddings(tokenizer, text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's CLIP context [11, L, 128] (both encoders' penultimate states, side by side) and pooled
    [11, 128] for the ten captions and "" (row 10), as StableDiffusion3Pipeline.encode_prompt makes them."""
    captions = [digit_caption(d) for d in range(10)] + [""]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    out = text_encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[-2]
    return torch.cat([hidden, hidden], dim=-1), torch.cat([out.text_embeds, out.text_embeds], dim=-1)


def with_zero_tokens(clip: torch.Tensor, count: int) -> torch.Tensor:
    """The CLIP context followed by `count` zero tokens (T5's place): [B, L + count, D]."""
    return torch.cat([clip, clip.new_zeros(clip.shape[0], count, clip.shape[2])], dim=1)


@torch.no_grad()
def check_collapse(transformer, clip: torch.Tensor, pooled: torch.Tensor) -> float:
    """Largest difference between the pipeline's context (256 zero tokens) and training's (one, weighted)."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300.0, 800.0])
    full = transformer(x, with_zero_tokens(clip[:2], T5_TOKENS), pooled[:2], t).sample
    transformer.set_attn_processor(RepeatedLastKey(T5_TOKENS))
    short = transformer(x, with_zero_tokens(clip[:2], 1), pooled[:2], t).sample
    transformer.set_attn_processor(JointAttnProcessor2_0())
    return float((full - short).abs().max())


def train_transformer(vae, tokenizer, text_encoder, args, progress: bool):
    from diffusers import SD3Transformer2DModel
    from digit_scorer import classify  # noqa: F401  (fails early when scikit-learn is missing)

    from vislora.diffusion import flow

    mean, std, labels = encode_digits(vae)                                   # [N, 4, 8, 8] x2, [N]
    shift = float(mean.mean())
    scaling = float(1.0 / (mean - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    clip, pooled = caption_embeddings(tokenizer, text_encoder)               # [11, L, 128], [11, 128]
    context = with_zero_tokens(clip, 1)                                      # [11, L + 1, 128]

    torch.manual_seed(args.seed)
    transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG)
    gap = check_collapse(transformer, clip, pooled)
    print(f"   one weighted zero token vs the pipeline's {T5_TOKENS}: largest difference {gap:.2e}", flush=True)
    if gap > 1e-4:
        raise RuntimeError(f"the collapsed context differs from the pipeline's by {gap}")
    transformer.set_attn_processor(RepeatedLastKey(T5_TOKENS))
    transformer.train()

    objective = flow.FlowObjective(weighting=args.weighting, precondition=False)
    table = flow.SigmaTable.from_config(SCHEDULER_CONFIG)
    params = list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, fused=True)
    warmup = max(1, args.steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    averaged = [p.detach().clone() for p in params] if args.ema > 0 else None
    gen = torch.Generator().manual_seed(args.seed + 1)
    bar = tqdm(range(args.steps), desc="transformer", disable=not progress)
    for step in bar:
        pick = torch.randint(len(mean), (args.batch,), generator=gen)
        x0 = ((mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) - shift) * scaling
        caption = torch.where(torch.rand(args.batch, generator=gen) < args.drop, 10, labels[pick])
        timesteps, sigmas = table.at(flow.table_index(flow.sample_u(objective, args.batch, gen), 1000))
        noise = torch.randn(x0.shape, generator=gen)
        noisy = flow.add_noise(x0, noise, sigmas)
        pred = transformer(noisy, context.index_select(0, caption), pooled.index_select(0, caption), timesteps).sample
        loss = (F.mse_loss(pred, flow.target(x0, noise, False), reduction="none").flatten(1).mean(1)
                * flow.loss_weights(args.weighting, sigmas)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if averaged is not None:
            keep = min(args.ema, (1 + step) / (10 + step))  # warmed up, so the random start fades fast
            with torch.no_grad():
                for avg, p in zip(averaged, params):
                    avg.lerp_(p, 1 - keep)
        report(bar, "transformer", step, args.steps, loss, progress)
    if averaged is not None:
        with torch.no_grad():
            for p, avg in zip(params, averaged):
                p.copy_(avg)
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer.set_attn_processor(JointAttnProcessor2_0())
    return transformer.eval(), labels


def t5_placeholder(d_model: int):
    """A T5 tokenizer (its minimal vocabulary) and a one-layer T5EncoderModel whose final norm scale is 0: it
    returns exact zeros, what StableDiffusion3Pipeline gives in T5's place when text_encoder_3 is None. Shipped
    so that from_pretrained(folder) opens the pipeline with no extra arguments; passing text_encoder_3=None,
    tokenizer_3=None draws the same images, faster."""
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tokenizer = T5TokenizerFast(extra_ids=0, model_max_length=T5_TOKENS)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=16, d_ff=16, num_layers=1,
                                      num_heads=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    with torch.no_grad():
        encoder.encoder.final_layer_norm.weight.zero_()
    return tokenizer, encoder.eval()


def fast_sampling(pipe) -> dict:
    """Make `pipe` draw what it draws by default at a seventh of the cost: one zero T5 token standing for 256
    (RepeatedLastKey). Returns the pipeline-call keyword that goes with it."""
    pipe.transformer.set_attn_processor(RepeatedLastKey(T5_TOKENS))
    return {"max_sequence_length": 1}


def legibility(folder: Path, n: int, guidance: float, steps: int = 20, seed: int = 0) -> list[float]:
    """The fraction of n drawings per digit prompt that the digit scorer reads as that digit, as
    bench/digits_sd.py measures it (same prompts, seeds and sampler steps)."""
    from diffusers import StableDiffusion3Pipeline
    from digit_scorer import classify

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    extra = fast_sampling(pipe)
    scores = []
    for d in range(10):
        images = pipe([digit_caption(d)] * n, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                      generator=torch.Generator().manual_seed(seed + d), **extra).images
        scores.append(float((classify(images) == d).mean()))
    return scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="folder to write; required, so that a run never replaces samples/digits_dit by accident")
    p.add_argument("--source", type=Path, default=HERE / "digits_sd", help="where the VAE and text parts come from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weighting", default="logit_normal", help="timestep scheme (vislora.diffusion.flow.SAMPLING)")
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--drop", type=float, default=0.1, help="fraction of captions replaced by '' (for CFG)")
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared machine; a given count repeats bit for bit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--score", type=int, default=0, metavar="N",
                   help="after saving, draw N images per digit at guidance 5 and 7 and record the scorer's reading")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    started = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress and sys.stderr.isatty()
    log: dict = {}
    with stage("parts", log):
        vae, tokenizer, text_encoder = load_parts(args.source, args.seed)
    with stage("transformer", log):
        transformer, _ = train_transformer(vae, tokenizer, text_encoder, args, progress)
    with stage("vae check", log):
        digits = encode_digits(vae)
        log["vae_reconstruction"] = check_vae(vae, digits[0], digits[2])
    with stage("save", log):
        t5_tokenizer, t5_encoder = t5_placeholder(TRANSFORMER_CONFIG["joint_attention_dim"])
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae,
            text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder, tokenizer_2=tokenizer,
            text_encoder_3=t5_encoder, tokenizer_3=t5_tokenizer)
        pipe.to(torch.float16)  # halves the folder; from_pretrained(torch_dtype=torch.float32) restores fp32
        pipe.save_pretrained(args.out, safe_serialization=True)
        forget_origin(args.out)
    if args.score:
        with stage("score", log):
            for g in (5.0, 7.0):
                per_digit = legibility(args.out, args.score, g)
                log[f"legibility_guidance_{g:g}"] = {"mean": round(float(np.mean(per_digit)), 4),
                                                     "per_digit": [round(x, 3) for x in per_digit]}
                print(f"   guidance {g:g}: legibility {np.mean(per_digit):.3f} {per_digit}", flush=True)
    sizes = {name: n_params(m) for name, m in (("vae", vae), ("transformer", transformer),
                                               ("text_encoder", text_encoder))}
    folder = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "source")}
    summary = {"params": sizes, "stages": log, "total_wall_s": round(time.perf_counter() - started, 1),
               "folder_bytes": folder, "args": settings}
    (args.out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return args.out


if __name__ == "__main__":
    main()

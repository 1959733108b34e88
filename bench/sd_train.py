"""DreamBooth LoRA training step: vislora's recipe against diffusers' train_dreambooth_lora.py, side by side.

A config-built SD1.5-architecture pipeline (UNet, VAE and CLIP ViT-L text encoder, random weights), 128x128
images, batch 1, LoRA rank 4 on the UNet attention. Three steps share the same base tensors and alternate
in one process; each ratio is the median over rounds of (time / reference time in the same round):

    vislora          the recipe's own step (vislora.diffusion.denoise): latents and the prompt embedding
                     cached once, LoRA by vislora.inject("unet.attn")
    diffusers        the step as train_dreambooth_lora.py takes it: PEFT on to_q/to_k/to_v/to_out.0
                     (unet.add_adapter), the VAE encodes the image and the text encoder the prompt every step
    diffusers cached the same PEFT UNet with both caches: a UNet-only comparison

Peak memory: the memory one step adds over what its process already holds (each variant alone in a fresh
process, the VAE and text encoder loaded in both), as bench/train_step.py measures it.

    python bench/sd_train.py [--rounds 5] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from harness import in_subprocess, interleaved, ratio, step_peak_mib, table  # noqa: E402
from train_step import shallow_copy  # noqa: E402

import vislora  # noqa: E402
from vislora.diffusion.latents import Items, TextCache  # noqa: E402
from vislora.diffusion.bases import DiffusionBase  # noqa: E402
from vislora.diffusion.pipeline import PromptEmbeds  # noqa: E402
from vislora.diffusion import denoise  # noqa: E402
from vislora.diffusion.batches import draw_seeds  # noqa: E402

SIZE, RANK = 128, 4
PEFT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # what train_dreambooth_lora.py adapts


def _random(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module with random weights, drawn fast: parameters are created empty (accelerate's
    init_empty_weights keeps buffers such as position ids real), then each matrix or kernel is drawn
    N(0, 1/fan_in) so activations keep their scale, biases 0, norm scales 1. The default init of 1.2 G
    parameters takes minutes on a busy CPU; the timings do not depend on which random weights they are."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        module = build()
    with torch.no_grad():
        for mod in module.modules():
            for name, p in list(mod.named_parameters(recurse=False)):
                fresh = torch.empty(p.shape)
                if p.dim() > 1:
                    fresh.normal_(0, p[0].numel() ** -0.5)
                else:
                    fresh.fill_(1.0 if "norm" in type(mod).__name__.lower() and name == "weight" else 0.0)
                mod._parameters[name] = torch.nn.Parameter(fresh, requires_grad=p.requires_grad)
    return module


def pipeline() -> SimpleNamespace:
    """SD1.5's UNet, VAE and text encoder configs with random weights (nothing is downloaded)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = _random(lambda: UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
    vae = _random(lambda: AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512))
    text = _random(lambda: CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, vocab_size=49408,
                                        hidden_act="quick_gelu", projection_dim=768)))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)
    for m in (unet, vae, text):
        m.requires_grad_(False).eval()
    pixels = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    ids = torch.randint(0, 49407, (1, 77))
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=text, scheduler=scheduler, pixels=pixels, ids=ids)


def _optimizer(unet) -> tuple[list, torch.optim.Optimizer]:
    params = [p for p in unet.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


def ours(p: SimpleNamespace) -> Callable[[], None]:
    """The recipe's step: cached latent distribution and prompt embedding, denoise's batch and loss, clip, AdamW."""
    unet = shallow_copy(p.unet)
    vislora.inject(unet, "unet.attn", rank=RANK, alpha=RANK)
    unet.train()
    with torch.no_grad():
        dist = p.vae.encode(p.pixels).latent_dist
        hidden = p.text_encoder(p.ids)[0]
    items = Items(SimpleNamespace(captions=["a sks dog"], sizes=[(SIZE, SIZE)]),
                                [torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)], [0], [(0, 0)])
    cached = [(dist.mean[0], dist.std[0])]
    text = TextCache(DiffusionBase(None, "sd1", "epsilon"), True)
    text.store["a sks dog"] = PromptEmbeds(hidden[0])
    alphas = torch.as_tensor(p.scheduler.alphas_cumprod, dtype=torch.float32)
    base = DiffusionBase(None, "sd1", "epsilon")
    params, opt = _optimizer(unet)
    count = iter(range(10**9))

    def step() -> None:
        batch = denoise.training_batch(base, p.vae, text, items, [0], cached,
                                       draw_seeds(0, next(count), 0, 1), alphas, "cpu")
        loss = denoise.unet_losses(unet, batch, alphas, base.prediction).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def diffusers_step(p: SimpleNamespace, cache: bool) -> Callable[[], None]:
    """train_dreambooth_lora.py's step (no prior preservation), with PEFT's LoRA added as it adds it."""
    from peft import LoraConfig

    unet = shallow_copy(p.unet)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=PEFT_TARGETS))
    unet.train()
    params, opt = _optimizer(unet)
    with torch.no_grad():
        dist, hidden = p.vae.encode(p.pixels).latent_dist, p.text_encoder(p.ids)[0]

    def step() -> None:
        if cache:
            latents = dist.sample() * p.vae.config.scaling_factor
            states = hidden
        else:
            latents = p.vae.encode(p.pixels).latent_dist.sample() * p.vae.config.scaling_factor
            states = p.text_encoder(p.ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, p.scheduler.config.num_train_timesteps, (1,))
        noisy = p.scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, states, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


VARIANTS = {"vislora": ours, "diffusers": lambda p: diffusers_step(p, False),
            "diffusers cached": lambda p: diffusers_step(p, True)}


def time_all(rounds: int) -> dict:
    p = pipeline()
    steps = {name: make(p) for name, make in VARIANTS.items()}
    print("built; timing", file=sys.stderr, flush=True)
    times = interleaved(steps, rounds)
    return {"seconds": {n: statistics.median(t) for n, t in times.items()},
            "vs diffusers": ratio(times, "vislora", "diffusers"),
            "vs diffusers cached": ratio(times, "vislora", "diffusers cached")}


def memory_of(variant: str) -> dict:
    return {"step_peak_mib": step_peak_mib(VARIANTS[variant](pipeline()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    ap.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = ["--threads", str(args.threads)] if args.threads else []
    if args.memory_of:
        print(json.dumps(memory_of(args.memory_of)))
        return
    if args.time:
        print(json.dumps(time_all(args.rounds)))
        return
    t = in_subprocess(__file__, ["--time", "--rounds", str(args.rounds), *threads])
    memory = {} if args.no_memory else {
        n: in_subprocess(__file__, ["--memory-of", n, *threads], for_memory=True)["step_peak_mib"] for n in VARIANTS}
    rows = [[n, f"{s:.3f}", f"{memory[n]:.0f}" if memory else "-"] for n, s in t["seconds"].items()]
    print(f"SD1.5 architecture (random weights), {SIZE}x{SIZE}, batch 1, LoRA r={RANK} on the UNet attention, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    print(table(rows, ["step", "s/step (median)", "step peak MiB"]))
    print(f"time  vislora / diffusers (encoding every step): {t['vs diffusers']:.3f}   (target <= 0.75)")
    print(f"time  vislora / diffusers with both caching (UNet only): {t['vs diffusers cached']:.3f}   (goal <= 0.95)")
    if memory:
        print(f"peak  vislora / diffusers: {memory['vislora'] / memory['diffusers']:.3f}   (target <= 1.0)")


if __name__ == "__main__":
    main()

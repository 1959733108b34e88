"""Flux.1 LoRA training step at full width: vislora's flow-matching step against train_dreambooth_lora_flux.py's
step with PEFT, and the frozen floor, side by side in one run.

A config-built FluxTransformer2DModel at Flux.1-dev's width (hidden 3072, 24 heads of 128, T5 width 4096,
guidance embedding) with --double / --single blocks (Flux.1-dev has 19 / 38; fewer keep a CPU run short), random
weights, one 256 px image (a 32x32x16 latent: 256 packed tokens) and --text-tokens T5 tokens (the script's
max_sequence_length, 512), batch 1, LoRA rank 16 (alpha 16) on the attention, fp32:

    vislora            the recipe's step: the latent distribution cached once, per-sample seeded draws
                       (vislora.diffusion.flow), the family's call (flow_layout.predict), LoRA by vislora.inject
    diffusers          the script's step, its defaults: PEFT (transformer.add_adapter, gaussian init) on
                       attn.to_q/k/v, to_out.0, add_q/k/v_proj, to_add_out (which also match the single blocks'
                       attn.to_q/k/v), the Flux VAE encoding the image every step, prompt embeddings computed once
    diffusers cached   the same with --cache_latents: a transformer-only comparison
    floor              the transformer with every weight frozen, gradients flowing to activations only

Both LoRA variants adapt the same 24 modules per double+single pair. The three steps share the base tensors
and alternate in one process; each ratio is the median over rounds of (time / the other's time in the same
round). Peak memory: what one step adds over what its process already holds, each variant alone in a fresh
process (the VAE loaded in all of them).

    python bench/dit_train.py [--rounds 3] [--double 1] [--single 1] [--threads 2] [--no-memory]
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

sys.path.insert(0, str(Path(__file__).parent))
from harness import in_subprocess, interleaved, ratio, step_peak_mib, table  # noqa: E402
from sd_train import _random  # noqa: E402
from train_step import shallow_copy  # noqa: E402

import vislora  # noqa: E402
from vislora.diffusion import flow  # noqa: E402
from vislora.diffusion import flow_layout as fl  # noqa: E402

SIZE, RANK = 256, 16
PEFT_TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out"]  # train_dreambooth_lora_flux.py's attention names
OUR_TARGETS = (r"re:(single_)?transformer_blocks\.\d+\.attn\."
               r"(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)")


def flux1_transformer(double: int, single: int) -> torch.nn.Module:
    """Flux.1-dev's transformer at full width (3072, 24 heads of 128, T5 width 4096, guidance embedding) with
    `double` / `single` blocks, random weights (seed 0), fp32."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return _random(lambda: FluxTransformer2DModel(in_channels=64, num_layers=double, num_single_layers=single,
                                                  guidance_embeds=True))


def base(double: int, single: int, text_tokens: int) -> SimpleNamespace:
    """Flux.1-dev's transformer width and VAE (AutoencoderKL, 16 latent channels), random weights."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    transformer = flux1_transformer(double, single)
    vae = _random(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False))
    for m in (transformer, vae):
        m.requires_grad_(False).eval()
    g = torch.Generator().manual_seed(1)
    return SimpleNamespace(
        transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                  max_shift=1.15),
        pixels=torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1,
        text=fl.TextInputs(torch.randn(1, text_tokens, 4096, generator=g), torch.randn(1, 768, generator=g)))


def _optimizer(model) -> tuple[list, torch.optim.Optimizer]:
    params = [p for p in model.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4) if params else None


def ours(p: SimpleNamespace, adapter: bool = True) -> Callable[[], None]:
    """The recipe's step: a cached latent distribution, seeded per-sample draws, the family's call, AdamW."""
    model = shallow_copy(p.transformer)
    if adapter:
        vislora.inject(model, OUR_TARGETS, rank=RANK, alpha=RANK)
    else:  # the floor: gradients reach the activations from the first block on, no weight learns
        model.x_embedder.register_forward_hook(lambda mod, args, out: out.requires_grad_())
    model.train()
    with torch.no_grad():
        dist = p.vae.encode(p.pixels).latent_dist
    mean, std = dist.mean, dist.std                                          # [1, 16, 32, 32]
    objective = flow.DEFAULTS["Flux.1"]
    table = flow.SigmaTable.from_config(p.scheduler.config)
    params, opt = _optimizer(model)
    count = iter(range(10**9))

    def step() -> None:
        d = flow.draw(tuple(mean.shape[1:]), torch.Generator().manual_seed(next(count)), objective, 1000)
        x0 = fl.model_latents("Flux.1", p.vae, mean + std * d.latent_noise[None])
        timesteps, sigmas = table.at(torch.tensor([d.index]))
        noisy = flow.add_noise(x0, d.noise[None], sigmas)
        pred = fl.predict("Flux.1", model, noisy, timesteps, p.text, objective.guidance)
        loss = ((pred.float() - flow.target(x0, d.noise[None], False)).pow(2).flatten(1).mean(1)
                * flow.loss_weights(objective.weighting, sigmas)).mean()
        loss.backward()
        if opt:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def diffusers_step(p: SimpleNamespace, cache: bool) -> Callable[[], None]:
    """train_dreambooth_lora_flux.py's step (no prior preservation, instance prompt embedded once)."""
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from peft import LoraConfig

    model = shallow_copy(p.transformer)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=PEFT_TARGETS))
    model.train()
    params, opt = _optimizer(model)
    sched = p.scheduler
    with torch.no_grad():
        cached = p.vae.encode(p.pixels).latent_dist
    shift, scale = p.vae.config.shift_factor, p.vae.config.scaling_factor
    text_ids = torch.zeros(p.text.hidden.shape[1], 3)

    def get_sigmas(timesteps: torch.Tensor, n_dim: int) -> torch.Tensor:
        steps = sched.timesteps
        sigma = sched.sigmas[[(steps == t).nonzero().item() for t in timesteps]].flatten()
        return sigma.view(-1, *([1] * (n_dim - 1)))

    def step() -> None:
        dist = cached if cache else p.vae.encode(p.pixels).latent_dist
        model_input = (dist.sample() - shift) * scale
        b, c, h, w = model_input.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", model_input.dtype)
        noise = torch.randn_like(model_input)
        u = compute_density_for_timestep_sampling("none", b, logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
        timesteps = sched.timesteps[(u * sched.config.num_train_timesteps).long()]
        sigmas = get_sigmas(timesteps, model_input.ndim)
        noisy = (1.0 - sigmas) * model_input + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        guidance = torch.tensor([3.5]).expand(b)
        pred = model(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                     pooled_projections=p.text.pooled, encoder_hidden_states=p.text.hidden, txt_ids=text_ids,
                     img_ids=image_ids, return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, h * 8, w * 8, 8)
        weighting = compute_loss_weighting_for_sd3("none", sigmas)
        target = noise - model_input
        loss = torch.mean((weighting.float() * (pred.float() - target.float()) ** 2).reshape(b, -1), 1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


VARIANTS = {"vislora": ours, "diffusers": lambda p: diffusers_step(p, False),
            "diffusers cached": lambda p: diffusers_step(p, True), "floor": lambda p: ours(p, adapter=False)}


def time_all(args) -> dict:
    p = base(args.double, args.single, args.text_tokens)
    steps = {name: make(p) for name, make in VARIANTS.items()}
    print("built; timing", file=sys.stderr, flush=True)
    times = interleaved(steps, args.rounds)
    return {"seconds": {n: statistics.median(t) for n, t in times.items()},
            "vs diffusers": ratio(times, "vislora", "diffusers"),
            "vs diffusers cached": ratio(times, "vislora", "diffusers cached"),
            "vs floor": ratio(times, "vislora", "floor"), "peft vs floor": ratio(times, "diffusers cached", "floor")}


def memory_of(args) -> dict:
    p = base(args.double, args.single, args.text_tokens)
    return {"step_peak_mib": step_peak_mib(VARIANTS[args.memory_of](p))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--double", type=int, default=1, help="double-stream blocks (Flux.1-dev: 19)")
    ap.add_argument("--single", type=int, default=1, help="single-stream blocks (Flux.1-dev: 38)")
    ap.add_argument("--text-tokens", type=int, default=512, help="T5 tokens (the script's max_sequence_length)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    ap.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(memory_of(args)))
        return
    if args.time:
        print(json.dumps(time_all(args)))
        return
    shape = ["--double", str(args.double), "--single", str(args.single), "--text-tokens", str(args.text_tokens)]
    shape += ["--threads", str(args.threads)] if args.threads else []
    t = in_subprocess(__file__, ["--time", "--rounds", str(args.rounds), *shape])
    memory = {} if args.no_memory else {
        n: in_subprocess(__file__, ["--memory-of", n, *shape], for_memory=True)["step_peak_mib"] for n in VARIANTS}
    rows = [[n, f"{s:.2f}", f"{memory[n]:.0f}" if memory else "-"] for n, s in t["seconds"].items()]
    print(f"Flux.1 at full width (3072, 24 heads), {args.double} double + {args.single} single blocks, random "
          f"weights, {SIZE} px (256 image tokens) + {args.text_tokens} text tokens, batch 1, LoRA r={RANK} on the "
          f"attention, fp32, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(table(rows, ["step", "s/step (median)", "step peak MiB"]))
    print(f"time  vislora / diffusers (the script's defaults, VAE every step): {t['vs diffusers']:.3f}   (goal <= 0.95)")
    print(f"time  vislora / diffusers --cache_latents (transformer only): {t['vs diffusers cached']:.3f}")
    print(f"time  over the frozen floor: vislora {t['vs floor']:.3f}, PEFT {t['peft vs floor']:.3f}")
    if memory:
        print(f"peak  vislora / diffusers: {memory['vislora'] / memory['diffusers']:.3f}   (goal <= 1.0); "
              f"vislora / diffusers cached: {memory['vislora'] / memory['diffusers cached']:.3f}")


if __name__ == "__main__":
    main()

"""Memory and time of a Flux.1 LoRA training step at full width: a bf16 base against an int8 base (torchao
through diffusers' TorchAoConfig, as `--quantize-base int8` loads it, with lean_backward), each with and without
gradient checkpointing; and the int8 base through autograd's own backward (which keeps each layer's dense
dequantized weight from forward to backward), with and without.

The transformer of bench/dit_train.py (hidden 3072, 24 heads of 128, T5 width 4096, guidance embedding, random
weights) with --double / --single blocks is saved once in bf16 to --folder. Each variant then runs alone in a
fresh process: FluxTransformer2DModel.from_pretrained in bf16 (quantized as it loads, or not), vislora LoRA r16
on the attention (dit_train.py's 24 modules per double+single pair), AdamW on the fp32 factors, and --steps
steps of the flow-matching loss on a random --size latent (256 px: 32x32x16, 256 packed tokens) and
--text-tokens T5 tokens, batch 1, under bf16 autocast (the recipes' --mixed-precision bf16). The VAE is left out: it is the same
in every variant. Per variant (Linux /proc/self/status, freed memory returned to the system):

    held MiB      resident memory after loading and injecting, over the interpreter and libraries alone
    load peak     the high-water mark while loading (from_pretrained reads bf16, then quantizes)
    step peak     the high-water mark of the steps over what the process held before them
    s/step        median over the steps after the first

    python bench/dit_memory.py [--double 1] [--single 1] [--size 256] [--text-tokens 64] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_train import OUR_TARGETS, RANK, flux1_transformer  # noqa: E402
from harness import status_mib, in_subprocess, table  # noqa: E402

import vislora  # noqa: E402
from vislora.diffusion.quantize import lean_backward  # noqa: E402
from vislora.diffusion import flow  # noqa: E402
from vislora.diffusion import flow_layout as fl  # noqa: E402

# name: (--quantize-base, gradient checkpointing, lean backward: vislora.diffusion.quantize.lean_backward)
VARIANTS = {"bf16": (None, False, False), "bf16 + checkpointing": (None, True, False),
            "int8": ("int8", False, True), "int8 + checkpointing": ("int8", True, True),
            "int8, autograd's backward": ("int8", False, False),
            "int8, autograd's backward + checkpointing": ("int8", True, False)}


def save_base(folder: Path, double: int, single: int) -> None:
    """dit_train.py's transformer, random weights, saved in bf16 (once per shape)."""
    if not (folder / "config.json").is_file():
        flux1_transformer(double, single).to(torch.bfloat16).save_pretrained(folder)


def load(folder: Path, quantize: str | None):
    """The transformer as the recipe loads its denoiser: diffusers' from_pretrained with the quantization config
    `--quantize-base` gives (vislora.diffusion.quantize)."""
    from diffusers import FluxTransformer2DModel

    from vislora.diffusion.quantize import QUANTIZERS

    kwargs = {"quantization_config": QUANTIZERS[quantize].config()} if quantize else {}
    # Read into memory, not mapped from the file: a mapped weight is resident only once a step touches it, which
    # would count the base's weights in the first step's peak instead of in what the process holds.
    return FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16, disable_mmap=True, **kwargs)


def measure(args) -> dict:
    quantize, checkpointing, lean = VARIANTS[args.variant]
    import diffusers  # noqa: F401  (the libraries' own memory is not the model's)

    if quantize:
        import torchao  # noqa: F401
    start = status_mib("VmRSS")
    model = load(Path(args.folder), quantize).requires_grad_(False)
    if lean:  # as the recipes load a quantized base
        lean_backward(model)
    vislora.inject(model, OUR_TARGETS, rank=RANK, alpha=RANK)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    held, load_peak = status_mib("VmRSS"), status_mib("VmHWM")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 16, args.size // 8, args.size // 8, generator=g)          # [1, 16, 32, 32] at 256 px
    text = fl.TextInputs(torch.randn(1, args.text_tokens, 4096, generator=g).bfloat16(),
                         torch.randn(1, 768, generator=g).bfloat16())
    objective = flow.DEFAULTS["Flux.1"]
    sigmas_of = flow.SigmaTable.from_config({"shift": 3.0, "use_dynamic_shifting": True})  # dit_train.py's scheduler

    def step(n: int) -> None:
        d = flow.draw(tuple(latent.shape[1:]), torch.Generator().manual_seed(n), objective, 1000)
        timesteps, sigmas = sigmas_of.at(torch.tensor([d.index]))
        noisy = flow.add_noise(latent, d.noise[None], sigmas)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = fl.predict("Flux.1", model, noisy.bfloat16(), timesteps, text, objective.guidance)
        loss = (pred.float() - flow.target(latent, d.noise[None], False)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    before = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # the high-water mark from here on: the steps only
        f.write("5")
    seconds = []
    for n in range(args.steps):
        started = time.perf_counter()
        step(n)
        seconds.append(time.perf_counter() - started)
    return {"held_mib": held - start, "load_peak_mib": load_peak - start, "step_peak_mib": status_mib("VmHWM") - before,
            "seconds": statistics.median(seconds[1:] or seconds), "trainable": sum(p.numel() for p in params),
            "base_params": sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--double", type=int, default=1, help="double-stream blocks (Flux.1-dev: 19)")
    ap.add_argument("--single", type=int, default=1, help="single-stream blocks (Flux.1-dev: 38)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (256: 256 packed image tokens)")
    ap.add_argument("--text-tokens", type=int, default=64, help="T5 tokens (the diffusers script's 512 are slow on CPU)")
    ap.add_argument("--steps", type=int, default=3, help="steps per variant; the first is not timed")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    ap.add_argument("--folder", help="where the bf16 base is saved, and found by later runs (default: a temporary "
                    "folder); a variant's process is given the model's own folder")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(measure(args)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or scratch) / f"flux1-d{args.double}-s{args.single}"
        save_base(folder, args.double, args.single)
        shape = ["--folder", str(folder), "--size", str(args.size), "--text-tokens", str(args.text_tokens),
                 "--steps", str(args.steps),
                 *(["--threads", str(args.threads)] if args.threads else [])]
        results = {}
        for name in VARIANTS:  # each alone in a fresh process
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = in_subprocess(__file__, ["--variant", name, *shape], for_memory=True)
    first = results["bf16"]
    print(f"Flux.1 at full width (3072, 24 heads), {args.double} double + {args.single} single blocks "
          f"({first['base_params'] / 1e6:.0f} M base parameters), random weights, {args.size} px ({(args.size // 16) ** 2} image tokens) + "
          f"{args.text_tokens} text tokens, batch 1, LoRA r={RANK} on the attention ({first['trainable'] / 1e6:.2f} M), "
          f"AdamW, bf16 autocast, {args.steps} steps, {torch.get_num_threads()} threads")
    rows = [[n, f"{r['held_mib']:.0f}", f"{r['load_peak_mib']:.0f}", f"{r['step_peak_mib']:.0f}",
             f"{r['held_mib'] + r['step_peak_mib']:.0f}", f"{r['seconds']:.2f}"] for n, r in results.items()]
    print(table(rows, ["base", "held MiB", "load peak MiB", "step peak MiB", "held + step MiB", "s/step"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Blending N adapters on a diffusion transformer: the unfused cost of AdapterBank on a Flux.1 transformer at full
width (3072 wide, 24 heads of 128; a few double and single blocks, random weights, built from its config),
against the plain transformer and against PEFT's multi-adapter weighted blend, side by side in one run.

    vislora    N adapters on every block layer (transformer.blocks), strengths 1/N: one stacked pass per layer
    diffusers  what a diffusers user writes: transformer.add_adapter per adapter, set_adapters(names, weights)
    peft       PEFT's layers with N active adapters, each scaled 1/N (inject_adapter_in_model + set_scale)

Each ratio is the median over interleaved rounds of (variant / plain forward in the same round). Goals for
vislora, as on the UNet: N=1 1.03, N=2 1.05, N=4 1.08, N=8 1.12.

    python bench/dit_blend.py                       # 2 double + 4 single blocks, 256 image + 64 text tokens
    python bench/dit_blend.py --rounds 5 --cpu-time # one thread, CPU time of this process (a shared machine)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from blend import diffusers_model, ours, peft_model  # noqa: E402
from harness import add_clock_option, clock_of, interleaved, ratio, table  # noqa: E402
from train_step import shallow_copy  # noqa: E402

warnings.filterwarnings("ignore")

TARGET = "transformer.blocks"
# The same layers as a PEFT target regex (matched against the whole module name).
REGEX = (r"(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
         r"|ff(_context)?\.net\.(0\.proj|2))|single_transformer_blocks\.\d+\.(attn\.to_[qkv]|proj_mlp|proj_out))")
GOALS = {1: 1.03, 2: 1.05, 4: 1.08, 8: 1.12}


def flux(double: int, single: int) -> torch.nn.Module:
    """Flux.1-dev's transformer config (3072 wide, 24 heads, T5 width 4096, CLIP pooled 768) with fewer blocks."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(in_channels=64, num_layers=double, num_single_layers=single,
                                  guidance_embeds=True).eval()


def inputs(image_tokens: int, text_tokens: int) -> dict[str, torch.Tensor]:
    """One sample: `image_tokens` packed latent patches (a square grid) and `text_tokens` T5 tokens."""
    g = torch.Generator().manual_seed(1)
    side = int(image_tokens ** 0.5)
    ids = torch.zeros(side * side, 3)
    ids[:, 1], ids[:, 2] = torch.arange(side * side) // side, torch.arange(side * side) % side
    return dict(hidden_states=torch.randn(1, side * side, 64, generator=g),
                encoder_hidden_states=torch.randn(1, text_tokens, 4096, generator=g),
                pooled_projections=torch.randn(1, 768, generator=g), timestep=torch.tensor([0.5]),
                img_ids=ids, txt_ids=torch.zeros(text_tokens, 3), guidance=torch.tensor([3.5]))


def adapted_layers(model: torch.nn.Module) -> int:
    return sum(1 for n, _ in model.named_modules() if n.endswith(".base_layer"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--blocks", default="2,4", help="double,single blocks")
    ap.add_argument("--tokens", default="256,64", help="image,text tokens (256: a 256 px image)")
    ap.add_argument("--peers", default="diffusers", help="diffusers, peft or both (comma-separated)")
    add_clock_option(ap)
    args = ap.parse_args()
    clock = clock_of(args)
    counts = [int(c) for c in args.adapters.split(",")]
    double, single = (int(x) for x in args.blocks.split(","))
    model = flux(double, single)
    x = inputs(*(int(t) for t in args.tokens.split(",")))
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Flux.1 transformer 3072 wide, {double} double "
          f"+ {single} single blocks, {params:.2f}B parameters; tokens {args.tokens}; rank {args.rank}; "
          f"{args.rounds} rounds, {'CPU' if args.cpu_time else 'wall'} time", flush=True)

    peers = {"diffusers": diffusers_model, "peft": peft_model}
    variants = {"plain": shallow_copy(model)}
    for n in counts:
        variants[f"vislora x{n}"] = ours(model, TARGET, n, rank=args.rank)[0]
        for peer in filter(None, args.peers.split(",")):
            variants[f"{peer} x{n}"] = peers[peer](model, REGEX, n, rank=args.rank)
    layers = {name: adapted_layers(m) for name, m in variants.items() if name != "plain"}
    if len(set(layers.values())) != 1:
        raise SystemExit(f"the variants adapt different layers: {layers}")
    print(f"{next(iter(layers.values()))} adapted layers in every variant", flush=True)

    def call(m):
        def run():
            with torch.no_grad():
                m(**x, return_dict=False)
        return run

    times = interleaved({n: call(m) for n, m in variants.items()}, args.rounds, clock=clock)
    rows = []
    for name, t in times.items():
        n = int(name.split("x")[-1]) if name != "plain" else None
        goal = f"{GOALS[n]:.2f}" if name.startswith("vislora") and n in GOALS else ""
        rows.append([name, f"{statistics.median(t):.3f}", f"{ratio(times, name, 'plain'):.3f}", goal])
    print("\n" + table(rows, ["variant", "s/call", "x plain", "goal"]), flush=True)


if __name__ == "__main__":
    main()

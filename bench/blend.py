"""Blending N adapters at inference: AdapterBank against PEFT (several active adapters, weighted) and diffusers'
set_adapters, each as a ratio to the plain model's forward, measured side by side in one run.

    unfused  every layer runs its N adapters as one stacked low-rank pass (ours), or N passes (peers)
    fused    the weighted sum merged into the weights (the plain model's cost)
    re-blend changing strengths while fused (re-fused from the pristine weights), / one batch-1 forward
    set      set_strengths of one adapter with 50 loaded, / the same with 5 loaded

    python bench/blend.py --rounds 3            # both cases
    python bench/blend.py --case vit --adapters 1,2,4,8
    python bench/blend.py --cpu-time            # one thread, CPU time of this process (a shared machine)
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import add_clock_option, clock_of, interleaved, ratio, table  # noqa: E402
from train_step import CASES, UNET_ATTN, VIT_LINEAR, shallow_copy  # noqa: E402

import vislora  # noqa: E402

warnings.filterwarnings("ignore")

TARGETS = {"vit": ("vit.all", VIT_LINEAR), "unet": ("unet.attn", UNET_ATTN)}
RANK = 8


def ours(model, target: str, n: int, rank: int = RANK) -> tuple[torch.nn.Module, vislora.AdapterBank]:
    m = shallow_copy(model)
    for i in range(n):
        torch.manual_seed(i)
        vislora.inject(m, target, rank=rank, name=f"a{i}", init="random", trainable=False)
    bank = vislora.AdapterBank(m)
    bank.set_strengths({f"a{i}": 1.0 / n for i in range(n)})
    return m, bank


def peft_model(model, regex: str, n: int, rank: int = RANK) -> torch.nn.Module:
    """PEFT's multi-adapter inference: n adapters injected, all active, each scaled by 1/n."""
    import peft

    m = shallow_copy(model)
    for i in range(n):
        config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=regex, init_lora_weights=False)
        m = peft.inject_adapter_in_model(config, m, adapter_name=f"a{i}")
    for module in m.modules():
        if hasattr(module, "set_adapter") and hasattr(module, "scaling"):
            module.set_adapter([f"a{i}" for i in range(n)])
            for i in range(n):
                module.set_scale(f"a{i}", 1.0 / n)
    return m


def diffusers_model(model, regex: str, n: int, rank: int = RANK) -> torch.nn.Module:
    """diffusers' path: unet.add_adapter per adapter, then unet.set_adapters(names, weights)."""
    import peft

    m = shallow_copy(model)
    for i in range(n):
        m.add_adapter(peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=regex, init_lora_weights=False),
                      adapter_name=f"a{i}")
    m.set_adapters([f"a{i}" for i in range(n)], weights=[1.0 / n] * n)
    return m


def forward_ratios(case: str, counts: list[int], rounds: int, clock) -> list[list[str]]:
    model, inputs, _, forward = CASES[case]()
    target, regex = TARGETS[case]
    variants = {"plain": shallow_copy(model)}
    for n in counts:
        variants[f"vislora x{n}"] = ours(model, target, n)[0]
        variants[f"peft x{n}"] = peft_model(model, regex, n)
        if case == "unet":
            variants[f"diffusers x{n}"] = diffusers_model(model, regex, n)
    fused_model, bank = ours(copy.deepcopy(model), target, max(counts))  # fusing writes weights: its own copy
    bank.fuse()
    variants[f"vislora x{max(counts)} fused"] = fused_model

    def call(m):
        def run():
            with torch.no_grad():
                forward(m, inputs)
        return run

    times = interleaved({n: call(m) for n, m in variants.items()}, rounds, clock=clock)
    return [[f"{case}: {n}", f"{statistics.median(t):.3f}", f"{ratio(times, n, 'plain'):.3f}"]
            for n, t in times.items()]


def reblend_ratio(case: str, n: int, rounds: int, clock) -> list[str]:
    """Seconds to change every adapter's strength while fused, / seconds of one batch-1 plain forward."""
    model, inputs, _, forward = CASES[case]()
    one = {k: v[:1] if v.dim() and v.shape[0] > 1 else v for k, v in inputs.items()}
    target, _ = TARGETS[case]
    m, bank = ours(model, target, n)
    bank.fuse()
    rng = random.Random(0)

    def reblend():
        bank.set_strengths({name: rng.uniform(0, 1) for name in bank.names})

    def plain():
        with torch.no_grad():
            forward(model, one)

    times = interleaved({"re-blend": reblend, "forward": plain}, rounds, clock=clock)
    bank.unfuse()
    return [f"{case}: re-blend {n} fused / batch-1 forward", f"{statistics.median(times['re-blend']):.3f}",
            f"{ratio(times, 're-blend', 'forward'):.3f}"]


def set_cost_ratio(case: str, clock, calls: int = 200, rounds: int = 5) -> list[list[str]]:
    """set_strengths of one adapter: 50 loaded / 5 loaded (unfused), per call; the two banks alternate
    `rounds` times and each takes the median. The garbage collector is off while timing, as timeit has it:
    50 adapters are many more objects for a collection to walk, which would time Python, not the bank."""
    model, _, _, _ = CASES[case]()
    target, _ = TARGETS[case]
    banks = {n: ours(model, target, n)[1] for n in (5, 50)}
    rng = random.Random(0)
    cost: dict[int, list[float]] = {n: [] for n in banks}
    for _ in range(rounds):
        for n, bank in banks.items():
            names = bank.names
            gc.collect()
            gc.disable()
            try:
                start = clock()
                for i in range(calls):
                    bank.set_strengths({names[i % 5]: rng.uniform(0, 1)})
                cost[n].append((clock() - start) / calls)
            finally:
                gc.enable()
    c5, c50 = statistics.median(cost[5]), statistics.median(cost[50])
    return [[f"{case}: set_strengths, 50 loaded / 5 loaded", f"{c50 * 1e3:.3f} ms", f"{c50 / c5:.3f}"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--adapters", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reblend-adapters", type=int, default=2)
    add_clock_option(ap)
    args = ap.parse_args()
    clock = clock_of(args)
    counts = [int(c) for c in args.adapters.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rank {RANK}, {args.rounds} rounds, "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    for case in CASES if args.case == "all" else [args.case]:
        rows = forward_ratios(case, counts, args.rounds, clock)
        rows.append(reblend_ratio(case, args.reblend_adapters, args.rounds, clock))
        rows += set_cost_ratio(case, clock)
        print("\n" + table(rows, ["variant", "s/call", "x plain"]), flush=True)


if __name__ == "__main__":
    main()

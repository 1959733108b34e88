"""Inference with adapters left unmerged (blending at run time) against the plain model and PEFT.

Unmerged adapters are what a user runs while mixing strengths; vislora folds them into the weight per
call where that is cheaper, so blending three adapters should cost little more than one. Merged is the
floor (it is the plain model's cost).

    python bench/inference.py --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import interleaved, ratio, table  # noqa: E402
from blend import peft_model  # noqa: E402
from train_step import CASES, UNET_ATTN, VIT_LINEAR, shallow_copy  # noqa: E402

import vislora  # noqa: E402

warnings.filterwarnings("ignore", message="Already found a `peft_config`")

TARGETS = {"vit": ("vit.all", VIT_LINEAR, 8), "unet": ("unet.attn", UNET_ATTN, 4)}


def variants(case: str, n_adapters: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    model, inputs, _, forward = CASES[case]()
    target, regex, rank = TARGETS[case]
    out = {"plain": shallow_copy(model)}
    for n in (1, n_adapters):
        ours = shallow_copy(model)
        for i in range(n):
            vislora.inject(ours, target, rank=rank, name=f"a{i}", init="random")
            vislora.set_strength(ours, f"a{i}", 1.0 / n)
        out[f"vislora x{n}"] = ours
        theirs = peft_model(model, regex, n, rank)  # every adapter active, each at 1/n
        out[f"peft x{n}"] = theirs
    merged = copy.deepcopy(out[f"vislora x{n_adapters}"])
    vislora.merge(merged)
    out[f"vislora x{n_adapters} merged"] = merged
    return out, inputs, forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for case in CASES if args.case == "all" else [args.case]:
        models, inputs, forward = variants(case, args.adapters)

        def call(m):
            def run():
                with torch.no_grad():
                    forward(m, inputs)
            return run

        times = interleaved({n: call(m) for n, m in models.items()}, args.rounds)
        rows = [[n, f"{statistics.median(t):.3f}", f"{ratio(times, n, 'plain'):.3f}"] for n, t in times.items()]
        print(f"\n{case} inference ({torch.get_num_threads()} threads)\n" + table(rows, ["variant", "s/call", "x plain"]))


if __name__ == "__main__":
    main()

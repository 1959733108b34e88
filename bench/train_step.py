"""LoRA training step: vislora and PEFT against the frozen floor, measured side by side in one run.

The floor is the same model with every weight frozen and gradients flowing to activations only: the
least any adapter method can cost. Each variant is timed in a fresh process against its own floor: the
two share the same base weight tensors, run in alternation, and make the first activation require grad,
so each backward reaches equally far and only the adapters differ. No other variant's allocations share
the process, as in a user's training run.

    python bench/train_step.py                 # both cases, timing + memory
    python bench/train_step.py --case vit --rounds 3
    python bench/train_step.py --keep-freed-memory   # the same with page faults out of the picture
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import (  # noqa: E402
    SavedActivations, bar_chart, in_subprocess, interleaved, keep_freed_memory, ratio, step_peak_mib, table,
)

import vislora  # noqa: E402

VIT_LINEAR = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
UNET_ATTN = r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)"
UNET_CONV = r"(resnets\.\d+\.(conv1|conv2|conv_shortcut)|(down|up)samplers\.\d+\.conv|attentions\.\d+\.(proj_in|proj_out))"


# -- cases: a base model, its inputs, the first module whose output should require grad; their variants --
VARIANTS = {
    "vit": {
        "vislora r8": dict(ours={"target": "vit.all", "rank": 8, "alpha": 8}),
        "peft r8": dict(peft=dict(r=8, lora_alpha=8, target_modules=VIT_LINEAR)),
        "vislora r8 dropout 0.1": dict(ours={"target": "vit.all", "rank": 8, "alpha": 8, "dropout": 0.1}),
        "peft r8 dropout 0.1": dict(peft=dict(r=8, lora_alpha=8, target_modules=VIT_LINEAR, lora_dropout=0.1)),
    },
    "unet": {
        "vislora attn r4": dict(ours={"target": "unet.attn", "rank": 4, "alpha": 4}),
        "peft attn r4": dict(peft=dict(r=4, lora_alpha=4, target_modules=UNET_ATTN)),
        "vislora attn r4 + LoCon r8": dict(ours={"target": {"unet.attn": 4, "unet.conv": {"rank": 8, "alpha": 8}}}),
        "peft attn r4 + conv r8": dict(peft=dict(r=4, lora_alpha=4, target_modules=rf"{UNET_ATTN}|.*{UNET_CONV}",
                                                 rank_pattern={UNET_CONV: 8}, alpha_pattern={UNET_CONV: 8})),
        "vislora attn r4 dropout 0.1": dict(ours={"target": "unet.attn", "rank": 4, "alpha": 4, "dropout": 0.1}),
        "peft attn r4 dropout 0.1": dict(peft=dict(r=4, lora_alpha=4, target_modules=UNET_ATTN, lora_dropout=0.1)),
    },
}


def vit_case():
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    inputs = {"x": torch.randn(8, 3, 224, 224)}
    return model, inputs, "patch_embed", lambda m, i: m(i["x"])


def unet_case():
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(  # the SD1.5 architecture, random weights
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval()
    inputs = {"sample": torch.randn(2, 4, 32, 32), "timestep": torch.tensor([10, 500]),
              "encoder_hidden_states": torch.randn(2, 77, 768)}
    return model, inputs, "conv_in", lambda m, i: m(**i).sample


CASES = {"vit": vit_case, "unet": unet_case}


def shallow_copy(model: torch.nn.Module) -> torch.nn.Module:
    """New module objects sharing the same parameter and buffer tensors (no extra weight memory)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def build(model, spec: dict) -> torch.nn.Module:
    """A variant sharing the base tensors; spec {} is the floor (no adapter, every weight frozen)."""
    m = shallow_copy(model)
    if "ours" in spec:
        args = dict(spec["ours"])
        vislora.inject(m, args.pop("target"), **args)
    elif "peft" in spec:
        import peft

        m = peft.inject_adapter_in_model(peft.LoraConfig(**spec["peft"]), m)
    for n, p in m.named_parameters():
        p.requires_grad_("lora" in n or ".adapters." in n)
    m.train()
    return m


def make_step(model, inputs, first: str, forward) -> Callable[[], None]:
    model.get_submodule(first).register_forward_hook(lambda mod, args, out: out.requires_grad_())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step() -> None:
        loss = forward(model, inputs).float().pow(2).mean()
        loss.backward()
        if opt:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def time_of(case: str, variant: str, rounds: int) -> dict:
    """One variant and the floor, alternating in this process: seconds per step and the ratio to the floor."""
    torch.manual_seed(0)
    model, inputs, first, forward = CASES[case]()
    models = {"floor": build(model, {}), variant: build(model, VARIANTS[case][variant])}
    steps = {n: make_step(m, inputs, first, forward) for n, m in models.items()}
    times = interleaved(steps, rounds)
    return {"seconds": statistics.median(times[variant]), "floor_seconds": statistics.median(times["floor"]),
            "ratio": ratio(times, variant, "floor")}


def memory_of(case: str, variant: str) -> dict:
    """One variant alone in this process: bytes saved for backward, and the peak memory a step adds."""
    torch.manual_seed(0)
    model, inputs, first, forward = CASES[case]()
    m = build(model, {} if variant == "floor" else VARIANTS[case][variant])
    step = make_step(m, inputs, first, forward)
    with SavedActivations(m.parameters()) as saved:
        loss = forward(m, inputs).float().pow(2).mean()
    loss.backward()
    m.zero_grad(set_to_none=True)
    del loss
    return {"saved_mib": saved.mib, "step_peak_mib": step_peak_mib(step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="time with glibc keeping freed memory (no page faults on reuse), as tcmalloc/jemalloc do")
    ap.add_argument("--plot", metavar="PNG", help="also draw the step-time ratios as a bar chart")
    ap.add_argument("--memory-of", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--time-of", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.keep_freed_memory and not keep_freed_memory():
        sys.exit("--keep-freed-memory needs glibc")
    if args.memory_of:
        print(json.dumps(memory_of(*args.memory_of)))
        return
    if args.time_of:
        print(json.dumps(time_of(*args.time_of, args.rounds)))
        return
    timing_flags = ["--rounds", str(args.rounds)] + (["--keep-freed-memory"] if args.keep_freed_memory else [])
    ratios: dict[str, dict[str, float]] = {}
    for case in CASES if args.case == "all" else [args.case]:
        title = f"{case} ({torch.get_num_threads()} threads)"
        ratios[title] = {}
        rows = []
        if not args.no_memory:
            mem = in_subprocess(__file__, ["--memory-of", case, "floor"], for_memory=True)
            rows.append(["floor", "", "", "1.000", f"{mem['saved_mib']:.0f}", f"{mem['step_peak_mib']:.0f}"])
        for name in VARIANTS[case]:
            t = in_subprocess(__file__, ["--time-of", case, name, *timing_flags])
            ratios[title][name] = t["ratio"]
            row = [name, f"{t['seconds']:.2f}", f"{t['floor_seconds']:.2f}", f"{t['ratio']:.3f}"]
            if not args.no_memory:
                mem = in_subprocess(__file__, ["--memory-of", case, name], for_memory=True)
                row += [f"{mem['saved_mib']:.0f}", f"{mem['step_peak_mib']:.0f}"]
            rows.append(row)
            print(f"  {case}: {name} done", file=sys.stderr, flush=True)
        header = ["variant", "s/step", "floor s/step", "x floor"]
        header += [] if args.no_memory else ["saved MiB", "step peak MiB"]
        print(f"\n{title}\n" + table(rows, header), flush=True)
    if args.plot:
        bar_chart(ratios, args.plot, "training step time / frozen floor")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

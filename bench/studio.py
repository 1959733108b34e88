"""Time per image in `vislora studio`, unfused and fused, as the page measures it (Studio.render).

    python bench/studio.py --model samples/digits_sd --adapters my_adapters/ [--steps 20] [--rounds 5]

Every usable adapter in the folder is switched on at strength 0.7. Without --adapters, two random rank-4
LoRAs on the UNet's attention stand in for trained styles (the cost of a LoRA does not depend on its values).
Prints the median seconds per image of each mode over interleaved rounds, and fused / unfused.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import vislora
from vislora.studio.generation import load_pipeline
from vislora.studio.mix import Mix, Request
from vislora.studio.state import Studio


def random_adapters(model: str, folder: Path, count: int = 2) -> Path:
    pipe = load_pipeline(model)
    for i in range(count):
        torch.manual_seed(i)
        vislora.inject(pipe, "unet.attn", rank=4, alpha=4, name="style", init="random")
        vislora.save_adapter(pipe, folder / f"style{i}.safetensors", name="style")
        vislora.remove(pipe, "style")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="samples/digits_sd")
    p.add_argument("--adapters")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.adapters) if args.adapters else random_adapters(args.model, Path(tmp))
        studio = Studio(args.model, folder, Path(tmp) / "out")
        mixes = {key: Mix(True, 0.7) for key in studio.names}
        request = Request("a handwritten digit three", steps=args.steps, guidance=5.0, mixes=mixes)
        times: dict[bool, list[float]] = {False: [], True: []}
        studio.render(request)  # warm-up
        for _ in range(args.rounds):
            for fused in (False, True):
                times[fused].append(studio.render(Request(**{**request.__dict__, "fused": fused})).seconds)
    unfused, fused = (statistics.median(times[f]) for f in (False, True))
    print(f"{len(mixes)} adapters on, {args.steps} steps, {args.threads} threads, {args.rounds} rounds (median)")
    print(f"unfused {unfused:.3f} s/image, fused {fused:.3f} s/image, fused / unfused {fused / unfused:.2f}")


if __name__ == "__main__":
    main()

"""`vislora classify` with its defaults against tuned settings, on two small image sets of different kinds.

    python bench/classify_defaults.py                       # the defaults and the tuning grid, both sets
    python bench/classify_defaults.py --only defaults       # one setting (a name from SETTINGS)

Sets, each 30 training images per class, 5 classes, a large held-out set so that a point of top-1 is
measurable (one image is 0.13 point of the digits' 747, 0.2 of the shapes' 500):
- digits: scikit-learn's handwritten 5-9 (samples/digits.py), the kind of picture the base was made on;
- shapes: coloured circles, squares, triangles, crosses and rings drawn procedurally (samples/shapes.py).
Every run adapts samples/digits_base.safetensors (a tiny ViT trained on the digits 0-4) with the recipe.
Results go to runs/bench_classify/results.json (one entry per set and setting; finished ones are kept, so an
interrupted sweep continues).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from digits import write_digits  # noqa: E402
from shapes import write_shapes  # noqa: E402

from vislora.recipes import classify_vit  # noqa: E402

OUT = ROOT / "runs" / "bench_classify"
BASE = ROOT / "samples" / "digits_base.safetensors"
OLD_DEFAULTS = ["--epochs", "10", "--lr", "1e-3", "--hflip", "0.5"]  # before the step budget and the scaled lr
SETTINGS: dict[str, list[str]] = {
    "defaults": [],
    "old defaults": OLD_DEFAULTS,
    "demo (40 epochs, lr 1e-2, batch 16)": ["--epochs", "40", "--lr", "1e-2", "--batch-size", "16"],
    **{f"{steps} steps, lr {lr}{', no flip' if not flip else ''}":
       ["--max-steps", str(steps), "--epochs", "10000", "--lr", lr, "--hflip", "0.5" if flip else "0"]
       for steps in (150, 300, 600) for lr in ("1e-3", "3e-3", "1e-2", "3e-2") for flip in (True, False)},
    "300 steps, lr 1e-2, rank 16": ["--max-steps", "300", "--epochs", "10000", "--lr", "1e-2", "--hflip", "0.5",
                                    "--rank", "16"],
    "300 steps, lr 1e-2, batch 16": ["--max-steps", "300", "--epochs", "10000", "--lr", "1e-2", "--hflip", "0.5",
                                     "--batch-size", "16"],
}


def image_sets(root: Path) -> dict[str, tuple[Path, Path]]:
    # 1 - 30/180 of each digit held out: about 30 training scans per class.
    return {"digits": write_digits(root / "digits59", range(5, 10), val_fraction=0.833),
            "shapes": write_shapes(root / "shapes", train_per_class=30, val_per_class=100)}


def run(name: str, flags: list[str], train: Path, val: Path, out: Path) -> dict:
    started = time.perf_counter()
    status = classify_vit.main(["--data", str(train), "--val-data", str(val), "--weights", str(BASE),
                                "--out", str(out), "--workers", "0", "--threads", "1", "--no-progress", "--seed", "0",
                                "--validate-every", "100000", *flags])  # validated once, at the end
    if status:
        raise SystemExit(status)
    m = json.loads((out / "metrics.json").read_text())
    return {"top1": m["val_top1"], "steps": m["steps"], "lr": m["verdict"]["lr"], "verdict": m["verdict"]["outcome"],
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", help="settings to run (names of SETTINGS)")
    p.add_argument("--sets", nargs="+", default=["digits", "shapes"])
    args = p.parse_args(argv)
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    chosen = [n for n in SETTINGS if not args.only or n in args.only]
    for set_name, (train, val) in image_sets(OUT / "data").items():
        if set_name not in args.sets:
            continue
        for name in chosen:
            key = f"{set_name} | {name}"
            if key in results and name != "defaults":  # the defaults are re-measured: they are what changes
                continue
            results[key] = run(name, SETTINGS[name], train, val, OUT / f"{set_name}-{list(SETTINGS).index(name)}")
            # Merged with what another sweep may have written meanwhile.
            results = {**(json.loads(results_path.read_text()) if results_path.exists() else {}), key: results[key]}
            results_path.write_text(json.dumps(results, indent=1))
            r = results[key]
            print(f"{key:<50} top-1 {100 * r['top1']:5.1f}%  {r['steps']:4d} steps  {r['seconds']:4.0f} s", flush=True)
    for set_name in args.sets:
        mine = {k.split(" | ", 1)[1]: v for k, v in results.items() if k.startswith(set_name + " |")}
        tuned = {k: v for k, v in mine.items() if k not in ("defaults", "old defaults")}
        if not tuned:
            continue
        best = max(tuned, key=lambda k: tuned[k]["top1"])
        show = {k: f"{100 * v['top1']:.1f}%" for k, v in mine.items() if k in ("defaults", "old defaults")}
        print(f"{set_name}: {show}; best tuned {100 * tuned[best]['top1']:.1f}% ({best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

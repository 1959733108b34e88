"""Head-only vs LoRA (ranks 1, 4, 8, 16) vs full fine-tuning on the demo task, in one table.

    python bench/transfer.py [--seeds 0 1 2] [--epochs 40]

The task is the demo's: the tiny ViT of samples/digits_base.safetensors (trained on digits 0-4 only)
adapted to the digits 5-9 (scikit-learn's scans, 70/30 stratified split), 40 epochs of 19 steps. Every configuration runs the
recipe in its own process, so each peak-memory figure is that process's own high-water mark
(getrusage ru_maxrss, read by the recipe at its end); "+train" is how far the peak rose during training
above the peak reached while importing, reading the data and building the model. Step time is the mean
wall time of an optimizer step after the first, including data loading. Accuracy is top-1 on the 270
validation images, mean and standard deviation over the seeds ("vs full" compares trainable parameters).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from digits import write_digits  # noqa: E402

BASE = ROOT / "samples" / "digits_base.safetensors"
# name -> recipe flags. One learning rate per mode, from a short sweep (1e-3, 3e-3, 1e-2) on this task; not per rank.
CONFIGS: dict[str, list[str]] = {
    "head-only": ["--head-only", "--lr", "1e-2"],
    **{f"LoRA r{r}": ["--rank", str(r), "--lr", "1e-2"] for r in (1, 4, 8, 16)},
    "full": ["--full", "--lr", "1e-3"],
}
# The demo's settings. One thread per run: steady timings on a shared 2-core machine (see samples/demo.py).
COMMON = ["--batch-size", "32", "--hflip", "0", "--crop-pct", "1", "--workers", "0", "--threads", "1",
          "--no-progress"]


def run(name: str, flags: list[str], seed: int, data: tuple[Path, Path], out: Path, args) -> dict:
    cmd = [sys.executable, str(ROOT / "recipes" / "classify_vit.py"), "--data", str(data[0]), "--val-data",
           str(data[1]), "--weights", str(BASE), "--epochs", str(args.epochs), "--seed", str(seed),
           *(["--preset", *args.preset] if args.preset else []), *COMMON, *flags, "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--preset", nargs="+", help="LoRA targets (default: the recipe's, vit.attn)")
    p.add_argument("--only", nargs="+", help="configuration names to run (default: all)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_digits(Path(tmp) / "digits59", range(5, 10))
        for name, flags in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            runs = [run(name, flags, s, data, Path(tmp) / f"{name}-{s}".replace(" ", "_"), args) for s in args.seeds]
            acc = [r["val_top1"] for r in runs]
            rows.append({"name": name, "acc": statistics.mean(acc), "sd": statistics.pstdev(acc),
                         "params": runs[0]["trainable_params"], "step_ms": 1000 * statistics.mean(r["step_time_s"] for r in runs),
                         "peak": max(r["peak_rss_mb"] for r in runs),
                         "rise": max(r["peak_rss_mb"] - r["rss_before_train_mb"] for r in runs)})
            print(f"{name}: {acc}", file=sys.stderr, flush=True)
    full = next((r for r in rows if r["name"] == "full"), None)
    print(f"| configuration | val top-1 (mean ± sd, {len(args.seeds)} seeds) | trainable params | vs full | "
          "step time | peak RSS | +train |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{100 * r['params'] / full['params']:.1f}%" if full else "-"
        print(f"| {r['name']} | {100 * r['acc']:.2f}% ± {100 * r['sd']:.2f} | {r['params']:,} | {share} | "
              f"{r['step_ms']:.1f} ms | {r['peak']:.0f} MiB | {r['rise']:.0f} MiB |")


if __name__ == "__main__":
    main()

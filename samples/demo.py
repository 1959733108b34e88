"""Demo: LoRA transfer learning on real handwriting, offline, on a CPU, in about a minute.

The base, samples/digits_base.safetensors (made by samples/make_digits_base.py), is a tiny ViT that has
only ever seen the handwritten digits 0-4. The demo lays out scikit-learn's scans of the digits 5-9 as an
image folder, fine-tunes the base on them with the recipe (LoRA on the attention layers plus a new 5-class
head), then predicts a few held-out images with the adapter file alone. Then samples/demo_sd.py runs the
Stable Diffusion part on the digits diffusion base: DreamBooth with and without prior preservation, and
bold and italic style adapters at several strengths, each measured (digit classifier, stroke width, slant).
Then samples/demo_blend.py mixes the two style adapters in a 3x3 grid and measures every cell. Last, the same
recipes with the same defaults train a DreamBooth subject and a bold style on the digits SD3 transformer base.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "samples"))

from digits import write_digits  # noqa: E402

from vislora.classify.classifier import load_classifier, predict  # noqa: E402
from vislora.recipes import classify_vit  # noqa: E402

BASE = ROOT / "samples" / "digits_base.safetensors"
OUT = ROOT / "runs" / "demo"
# One thread: the model is tiny, a second thread gains little, and on a busy machine threads wait on each other.
TRAINING = ["--rank", "8", "--epochs", "40", "--batch-size", "32", "--lr", "1e-2", "--hflip", "0", "--crop-pct", "1",
            "--seed", "0", "--workers", "0", "--threads", "1"]


def main() -> int:
    started = time.perf_counter()
    train, val = write_digits(OUT / "digits59", range(5, 10))
    print(f"base:  {BASE.relative_to(ROOT)}, a tiny ViT (4 blocks, width 96, 16x16 input) trained on digits 0-4 only")
    print(f"data:  scikit-learn's handwritten 5-9 as an image folder: {train.relative_to(ROOT)} and "
          f"{val.relative_to(ROOT)}\n")
    adapter_run = OUT / "lora"
    status = classify_vit.main(["--data", str(train), "--val-data", str(val), "--weights", str(BASE),
                                "--out", str(adapter_run), *TRAINING])
    if status:
        return status
    metrics = json.loads((adapter_run / "metrics.json").read_text())

    # Prediction needs only the adapter file: it names its base (path and sha256), classes and preprocessing.
    adapter = adapter_run / "adapter.safetensors"
    examples = [sorted((val / str(d)).iterdir())[0] for d in range(5, 10)]
    classifier = load_classifier(adapter)
    print("\npredictions on held-out images (top 2):")
    for image, ranked in zip(examples, predict(classifier, examples, top_k=2)):
        truth = image.parent.name
        mark = "right" if ranked[0][0] == truth else "WRONG"
        shown = ", ".join(f"{label} {p:.2f}" for label, p in ranked)
        print(f"  {image.relative_to(ROOT)}  (a {truth}) -> {shown}  [{mark}]")

    print(f"\ntrained: LoRA rank 8 on the attention (qkv, proj) of all 4 blocks, plus a new 5-class head, "
          f"{metrics['steps']} steps")
    print(f"accuracy: {100 * metrics['val_top1']:.1f}% top-1 on {len(list(val.rglob('*.png')))} held-out images "
          f"of digits the base never saw")
    print(f"trainable: {metrics['trainable_params']:,} of {metrics['total_params']:,} parameters "
          f"({100 * metrics['trainable_share']:.1f}%)")
    print(f"files: {adapter.relative_to(ROOT)} (adapter + head, {adapter.stat().st_size / 1024:.0f} KiB), "
          f"{(adapter_run / 'metrics.png').relative_to(ROOT)}, {(adapter_run / 'metrics.json').relative_to(ROOT)}")
    print(f"try:   .venv/bin/vislora predict --adapter {adapter.relative_to(ROOT)} {examples[0].relative_to(ROOT)}")

    # Stable Diffusion: DreamBooth and style adapters on the digits diffusion base (samples/demo_sd.py).
    import demo_sd

    demo_sd.dreambooth()
    demo_sd.styles()

    # The last stop: the two style adapters mixed at 0 / 0.5 / 1 with the AdapterBank (samples/demo_blend.py).
    import demo_blend

    print("\nBlend: the bold and italic adapters mixed in one pass per layer (vislora.AdapterBank)")
    style = OUT / "style"
    demo_blend.blend_grid(style / "bold" / "adapter.safetensors", style / "italic" / "adapter.safetensors",
                          out=OUT / "blend")
    print(f"try:   .venv/bin/vislora generate --model samples/digits_sd --lora {style.relative_to(ROOT)}/bold/"
          f"adapter.safetensors:0.7 --lora {style.relative_to(ROOT)}/italic/adapter.safetensors:0.5 "
          f"--prompt 'a handwritten digit seven' --n 8 --out runs/demo/seven.png")

    # Diffusion transformers: the same recipes, unchanged defaults, on the digits SD3 base (samples/digits_dit).
    transformer = "the digits SD3 transformer base"
    demo_sd.dreambooth(demo_sd.DIGITS_DIT, OUT / "dit" / "dreambooth", variants=("prior",), title=transformer)
    demo_sd.styles(demo_sd.DIGITS_DIT, OUT / "dit" / "style", names=("bold",), title=transformer)
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

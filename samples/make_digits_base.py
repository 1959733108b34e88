"""Make samples/digits_base.safetensors: a tiny ViT trained from scratch on the digits 0-4 only.

    python samples/make_digits_base.py        # under a minute on 2 CPU cores

It is the "pretrained" base of the demo: the demo adapts it with LoRA to the digits 5-9, which it has
never seen. The file records its timm model and kwargs in its metadata, so `--weights` alone names it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits import write_digits  # noqa: E402

from vislora.formats import container  # noqa: E402
from vislora.recipes import classify_vit  # noqa: E402

MODEL = "vit_tiny_patch16_224"
KWARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 4}
TRAINING = ["--full", "--epochs", "40", "--batch-size", "32", "--lr", "1e-3", "--hflip", "0", "--crop-pct", "1",
            "--seed", "0", "--workers", "0", "--threads", "1", "--no-progress"]


def main(out: Path = HERE / "digits_base.safetensors") -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        train, val = write_digits(Path(tmp) / "digits04", range(5))
        run = Path(tmp) / "run"
        status = classify_vit.main(["--data", str(train), "--val-data", str(val), "--model", MODEL,
                                    "--model-kwargs", json.dumps(KWARGS), "--out", str(run), *TRAINING])
        if status:
            raise SystemExit(status)
        tensors, _ = container.read(run / "model.safetensors")
    meta = {"format": "pt", "timm_model": MODEL, "timm_model_kwargs": json.dumps(KWARGS, sort_keys=True),
            "description": "tiny ViT trained from scratch on scikit-learn digits 0-4 (samples/make_digits_base.py)"}
    # Stored in float16 to halve the file (0.9 MB); models load it into float32.
    container.write(out, {k: v.to(torch.float16) for k, v in tensors.items()}, meta)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return out


if __name__ == "__main__":
    main()

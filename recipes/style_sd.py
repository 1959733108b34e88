"""Train a style LoRA for Stable Diffusion from a folder of captioned images (the DreamBooth recipe's
style mode: same flags, outputs and guarantees).

    python recipes/style_sd.py --model DIR|HUB_ID|FILE.safetensors --data DIR [--caption TEXT] \
        [--trigger WORD] --out runs/style

Captions: a .txt beside each image, or metadata.jsonl ({"file_name": ..., "text": ...}), or --caption for
all. Images that are not square train in aspect-ratio buckets of about the training area (--no-buckets: crop).
"""

from __future__ import annotations

import sys

from vislora.recipes import dreambooth_sd


def main(argv: list[str] | None = None) -> int:
    return dreambooth_sd.main(argv, task="style")


if __name__ == "__main__":
    sys.exit(main())

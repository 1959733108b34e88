"""Train a style LoRA for Stable Diffusion from a folder of captioned images.

    python recipes/style_sd.py --model DIR|HUB_ID|FILE.safetensors --data DIR [--caption TEXT] \
        [--trigger WORD] --out runs/style
    accelerate launch --num_processes 4 recipes/style_sd.py ...             # the same, data-parallel

Captions: a .txt beside each image, or metadata.jsonl ({"file_name": ..., "text": ...}), or --caption for
all. Images that are not square train in aspect-ratio buckets of about the training area (--no-buckets: crop).
Writes what recipes/dreambooth_sd.py writes (the adapter with its base and captions in the metadata, metrics,
sample grids, checkpoints that --resume continues from bit for bit), through the same training loop
(vislora.diffusion.train_loop).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vislora import checks
from vislora.diffusion import (Session, Task, bucketed, check_caption_files, check_run_folder, check_trigger,
                               image_files, options, prompt_tokenizer, report, run_main, scan_captioned, start,
                               train, training_size, trigger_words, warn_long_prompts)


# -- 1. the flags ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = options.parser(__doc__.split("\n\n")[0], "style")
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="images with captions: a .txt beside each, or metadata.jsonl")
    data.add_argument("--caption", help="one caption for every image (overrides the caption files)")
    data.add_argument("--trigger", help="a trigger word put first in every caption")
    data.add_argument("--no-buckets", dest="buckets", action="store_false",
                      help="centre-crop every image square instead of aspect-ratio buckets")
    options.add_training_options(p, steps=options.STYLE_STEPS, conv_rank=options.STYLE_CONV_RANK)
    args = p.parse_args(argv)
    args.task = "style"
    return args


# Every flag's constraint, checked in one step before anything is loaded (vislora.checks).
RULES = options.rules()


# -- 2. the checks ---------------------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Every flag, the data folder (and its caption files) and the run folder, before any file is read."""
    checks.check(args, RULES)
    options.check_pairs(args)
    options.resolve_defaults(args)  # the defaults that depend on other flags, before the run's identity is taken
    image_files(Path(args.data), "--data")
    if args.caption is None:  # the caption files are read: one not UTF-8 is found now
        check_caption_files(Path(args.data), "--data")
    check_run_folder(args)


# -- 3. the data -----------------------------------------------------------------------------------------------
def load_task(args: argparse.Namespace, session: Session) -> Task:
    """The captioned pictures (the trigger first in each caption), in aspect-ratio buckets unless
    --no-buckets, checked before any training."""
    base, main = session.base, session.main
    resolution = training_size(base, args.resolution)
    data = scan_captioned(args.data, flag="--data", caption=args.caption, trigger=args.trigger,
                          min_size=resolution, warn=main)
    prompts = dict(zip(data.paths, data.captions))  # each caption named by its picture
    for i, prompt in enumerate(args.validation_prompt or []):
        prompts[f"--validation-prompt {i + 1}"] = prompt
    warn_long_prompts(base, prompts, main)
    if main and args.trigger:
        check_trigger(prompt_tokenizer(base.pipe), trigger_words(args.trigger), "--trigger")
    items = bucketed(base, data, resolution, square=not args.buckets)
    return Task("style", items, resolution, prompts=args.validation_prompt or list(dict.fromkeys(data.captions))[:2],
                info={"caption": args.caption, "trigger": args.trigger})


# -- 4. the run ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    check_args(args)
    session = start(args)  # the base on its device, the adapter targets checked against it
    return train(args, session, load_task(args, session))


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a vislora error is printed as one line (no traceback) with exit status 2."""
    return run_main(run, parse_args(argv), report)


if __name__ == "__main__":
    sys.exit(main())

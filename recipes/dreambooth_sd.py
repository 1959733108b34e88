"""Teach a Stable Diffusion model a subject (DreamBooth) with LoRA, on one CPU or many GPUs (accelerate).

    python recipes/dreambooth_sd.py --model DIR|HUB_ID|FILE.safetensors --instance-data DIR \
        --instance-prompt "a sks dog" --prior-preservation --class-prompt "a dog" --out runs/dog
    accelerate launch --num_processes 4 recipes/dreambooth_sd.py ...        # the same, data-parallel

recipes/style_sd.py trains on a folder of captioned images instead (--data, --caption, --trigger,
aspect-ratio buckets). Writes OUT/adapter.safetensors (loads in diffusers' `pipe.load_lora_weights`; its
metadata records the base and the prompts), OUT/metrics.json, metrics.csv and loss.png, a labelled sample
grid per validation (OUT/samples/step-000200.png), and transactional checkpoints that --resume continues from,
bit for bit. The training loop is vislora.diffusion.train_loop, shared with the style recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vislora import checks
from vislora.diffusion import (Captioned, Session, Task, bucketed, check_run_folder, check_trigger, draw_class_images,
                               image_files, options, prompt_tokenizer, report, run_main, scan_captioned, start, train,
                               training_size, trigger_words, warn_long_prompts)
from vislora.diffusion import METADATA_KEY, multiple_of  # noqa: F401  (named here by scripts that read the files)

PRESERVATION = ("base-prediction", "class-images")


# -- 1. the flags ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None, task: str = "dreambooth") -> argparse.Namespace:
    if task == "style":  # `task` is kept for callers that name it: the style recipe's flags are its own
        from vislora.recipes import style_sd

        return style_sd.parse_args(argv)
    p = options.parser(__doc__.split("\n\n")[0], "dreambooth")
    data = p.add_argument_group("data")
    data.add_argument("--instance-data", required=True, help="folder of images of the subject")
    data.add_argument("--instance-prompt", required=True, help='e.g. "a sks dog"')
    data.add_argument("--prior-preservation", action="store_true",
                      help="keep what --class-prompt draws (see --preservation)")
    data.add_argument("--class-prompt", help='e.g. "a dog" (needed with --prior-preservation)')
    data.add_argument("--preservation", choices=PRESERVATION,
                      help="base-prediction (the default): the class prompt's target is the frozen base's own "
                           "prediction on the instance samples' noisy latents, no class images; class-images "
                           "(the default when --class-data is given): train on --num-class-images pictures "
                           "the base draws for the class prompt (docs/defaults.md compares them)")
    data.add_argument("--class-data", help="folder of class images; the missing ones are generated and kept "
                      "(default OUT/class_images; --preservation class-images)")
    data.add_argument("--num-class-images", type=int, default=100)
    data.add_argument("--prior-loss-weight", type=float, default=1.0)
    options.add_training_options(p, train_text_encoder=True)
    args = p.parse_args(argv)
    args.task = "dreambooth"
    return args


# Every flag's constraint, checked in one step before anything is loaded (vislora.checks).
RULES = options.rules(num_class_images=checks.count(1), prior_loss_weight=checks.number(0))


# -- 2. the checks ---------------------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Every flag, the flag combinations, the data folder and the run folder, before any file is read."""
    checks.check(args, RULES)
    options.check_pairs(args)
    if args.prior_preservation and not args.class_prompt:
        raise checks.UsageError("--prior-preservation needs --class-prompt (e.g. \"a dog\")")
    # The defaults that depend on other flags, resolved before the run folder's identity is taken.
    options.resolve_defaults(args)
    if args.preservation is None:
        args.preservation = "class-images" if args.class_data else "base-prediction"
    image_files(Path(args.instance_data), "--instance-data")  # a missing folder is found before the model loads
    check_run_folder(args)


# -- 3. the data -----------------------------------------------------------------------------------------------
def load_task(args: argparse.Namespace, session: Session) -> Task:
    """The subject's pictures under the instance prompt, and what preservation keeps, checked before any
    training."""
    base, main = session.base, session.main
    resolution = training_size(base, args.resolution)
    data = scan_captioned(args.instance_data, flag="--instance-data", caption=args.instance_prompt,
                          min_size=resolution, warn=main)
    prompts = {"--instance-prompt": caption for caption in data.captions}
    if args.class_prompt:
        prompts["--class-prompt"] = args.class_prompt
    for i, prompt in enumerate(args.validation_prompt or []):
        prompts[f"--validation-prompt {i + 1}"] = prompt
    warn_long_prompts(base, prompts, main)
    if main:
        check_trigger(prompt_tokenizer(base.pipe), trigger_words(args.instance_prompt, args.class_prompt), "--instance-prompt")
    items = bucketed(base, data, resolution, square=True)
    preservation = args.preservation if args.prior_preservation else None
    classes = None
    if preservation == "class-images":  # the base draws the class pictures it lacks, once, into the class folder
        folder = draw_class_images(base, session.accelerator, Path(args.class_data or Path(args.out) / "class_images"),
                                   args.class_prompt, args.num_class_images, seed=args.seed, steps=args.sample_steps,
                                   guidance=args.guidance, resolution=resolution, progress=args.progress)
        found = scan_captioned(folder, flag="--class-data", caption=args.class_prompt, min_size=resolution, warn=main)
        n = args.num_class_images
        classes = bucketed(base, Captioned(found.paths[:n], found.captions[:n], found.sizes[:n]), resolution,
                           square=True, first_only=True)
    return Task("dreambooth", items, resolution, prompts=args.validation_prompt or [args.instance_prompt],
                info={"instance_prompt": args.instance_prompt,
                      "class_prompt": args.class_prompt if args.prior_preservation else None},
                preservation=preservation, class_prompt=args.class_prompt, classes=classes,
                prior_loss_weight=args.prior_loss_weight, drift_prompt=args.class_prompt)


# -- 4. the run ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    check_args(args)
    session = start(args)  # the base on its device, the adapter targets checked against it
    return train(args, session, load_task(args, session))


def main(argv: list[str] | None = None, task: str = "dreambooth") -> int:
    """Run the recipe; a vislora error is printed as one line (no traceback) with exit status 2."""
    if task == "style":  # `task` is kept for callers that name it: the style recipe runs as its own
        from vislora.recipes import style_sd

        return style_sd.main(argv)
    return run_main(run, parse_args(argv), report)


if __name__ == "__main__":
    sys.exit(main())

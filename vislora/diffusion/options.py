"""The flags every diffusion training recipe shares, their constraints, and the defaults that depend on other
flags. A recipe builds its parser as

    p = options.parser(__doc__.split("\n\n")[0], "dreambooth")      # the model group
    data = p.add_argument_group("data")                             # the recipe's own data flags
    ...
    options.add_training_options(p)                                 # adapter, training, validation, output

so every recipe's --help lists the groups in the same order, and `rules(...)` puts the recipe's data rules
between the model's and the training's.
"""

from __future__ import annotations

import argparse

from .. import checks
from ..helpformat import HelpFormatter
from ..train.optimizers import DEFAULT_LR, OPTIMIZERS
from .bases import add_source_options
from .quantize import QUANTIZERS, quantizer_rule

# Arguments that do not change what is trained; everything else must match to resume.
NOT_TRAJECTORY = {"out", "resume", "overwrite", "threads", "checkpoint_every", "keep", "progress", "validate_every",
                  "validation_prompt", "validation_seeds", "sample_steps", "guidance", "class_data", "model",
                  "model_config", "revision", "eval_images"}  # the base itself is hashed by its record
# Chosen by measurement on two digits bases of different widths (docs/defaults.md), with Prodigy.
DEFAULT_STEPS, DEFAULT_BATCH, DEFAULT_RANK = 600, 4, 4
STYLE_STEPS, STYLE_CONV_RANK = 1000, 4  # a style reshapes every drawing: LoCon, and longer
# The empty prompt held at the base's prediction: guidance amplifies what the adapter learned instead of
# cancelling it (preserve.py); measured on both digits bases, DreamBooth and styles (docs/defaults.md). Not in
# DreamBooth without preservation: guidance would amplify the drift of every other prompt as well.
KEEP_UNCONDITIONAL = 0.1

_MODEL_RULES = {"resolution": checks.count(8), "quantize_base": quantizer_rule}
_TRAINING_RULES = {
    "rank": checks.count(1), "alpha": checks.positive("4; left out, alpha = rank"), "conv_rank": checks.count(0),
    "conv_alpha": checks.positive("4; left out, alpha = conv rank"), "dropout": checks.share(example="0.1"),
    "steps": checks.count(1), "lr": checks.positive("1.0 with prodigy, 1e-4 with adamw"), "warmup": checks.share(example="0.05"),
    "batch_size": checks.count(1), "grad_accum": checks.count(1), "snr_gamma": checks.positive("5"),
    "noise_offset": checks.number(0, example="0.05"), "keep_unconditional": checks.number(0, example="0.1"), "clip_grad": checks.number(0), "threads": checks.count(1),
    "seed": checks.count(0), "validate_every": checks.count(0), "validation_seeds": checks.each(checks.count(0)),
    "sample_steps": checks.count(1), "guidance": checks.number(0, example="7.5"), "eval_images": checks.count(0),
    "checkpoint_every": checks.count(0), "keep": checks.count(1), "out": checks.writable_folder(),
}


def rules(**data: checks.Rule) -> dict[str, checks.Rule]:
    """Every flag's constraint (vislora.checks), the recipe's data flags' `data` among them."""
    return {**_MODEL_RULES, **data, **_TRAINING_RULES}


def parser(description: str, task: str) -> checks.Parser:
    """The command's parser (`vislora TASK`) with its model group."""
    p = checks.Parser(description=description, prog=f"vislora {task}", formatter_class=HelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--model", required=True, help="diffusers folder, hub id, or a single .safetensors file")
    add_source_options(model)
    model.add_argument("--resolution", type=int, help="training size in pixels (default: the model's)")
    model.add_argument("--quantize-base", metavar="|".join(QUANTIZERS),
                       help="load the frozen UNet or transformer quantized: " + "; ".join(
                           f"{name}: {q.what}" for name, q in QUANTIZERS.items()) + ". The adapters train in full "
                       "precision and their file is the same as without (docs/diffusion.md)")
    return p


def add_training_options(p: argparse.ArgumentParser, *, steps: int = DEFAULT_STEPS, conv_rank: int = 0,
                         train_text_encoder: bool = False) -> None:
    """The adapter, training, validation and output groups, with the recipe's own defaults where they differ
    (docs/defaults.md: a style trains LoCon on the convs and longer; DreamBooth trains the text encoder)."""
    adapt = p.add_argument_group("adapter")
    adapt.add_argument("--preset", nargs="+", help="presets or patterns (default: the denoiser's attention, "
                       "unet.attn on a UNet, transformer.attn on a diffusion transformer; a style trains "
                       "transformer.blocks there, the feed-forwards too)")
    adapt.add_argument("--rank", type=int, default=DEFAULT_RANK)
    adapt.add_argument("--alpha", type=float, help="default: the rank (scale 1)")
    adapt.add_argument("--conv-rank", type=int, help=f"LoCon on the UNet convs with this rank (0: none; default "
                       f"{conv_rank} on a UNet, none on a diffusion transformer)")
    p.set_defaults(unet_conv_rank=conv_rank)
    adapt.add_argument("--conv-alpha", type=float, help="default: the conv rank")
    adapt.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=train_text_encoder,
                       help=f"also LoRA on the text encoder(s) (default: {'on' if train_text_encoder else 'off'})")
    adapt.add_argument("--dropout", type=float, default=0.0)
    adapt.add_argument("--dora", action="store_true", help="DoRA: also train a magnitude per output row")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, default=steps, help="optimizer steps, never derived from epochs")
    train.add_argument("--optimizer", choices=OPTIMIZERS,
                       help="prodigy (the default: finds its own step size; docs/defaults.md) or adamw (the default "
                            "with --lr or --use-8bit-adam)")
    train.add_argument("--lr", type=float, help="default: 1.0 with prodigy (a multiplier of its own estimate), "
                       "1e-4 with adamw; given without --optimizer, it is AdamW's fixed step size")
    train.add_argument("--lr-schedule", choices=("constant", "cosine"),
                       help="default: cosine with prodigy (its step size otherwise keeps growing), constant with adamw")
    train.add_argument("--warmup", type=float, default=0.0, help="share of the steps with linear warm-up")
    train.add_argument("--batch-size", type=int,
                       help=f"per process (and as many class samples); default {DEFAULT_BATCH}, or fewer where the "
                            "images (the largest aspect-ratio bucket) are fewer")
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--snr-gamma", type=float, help="min-SNR-gamma loss weighting (5 is common)")
    train.add_argument("--noise-offset", type=float, default=0.0)
    train.add_argument("--keep-unconditional", type=float, metavar="WEIGHT",
                       help="weight of holding the empty prompt's prediction at the base's, on one sample in 4, so "
                            f"that guidance amplifies what the adapter learned (default {KEEP_UNCONDITIONAL:g}, but 0 "
                            "in DreamBooth without preservation; 0: off; docs/defaults.md)")
    train.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    train.add_argument("--no-cache", dest="cache", action="store_false",
                       help="encode images and prompts every step instead of once")
    train.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes' AdamW8bit (GPU)")
    train.add_argument("--cpu", action="store_true")
    train.add_argument("--threads", type=int)
    train.add_argument("--seed", type=int, default=0)
    val = p.add_argument_group("validation")
    val.add_argument("--validate-every", type=int, default=0, help="steps between sample grids (0: at the end only)")
    val.add_argument("--validation-prompt", nargs="+", help="default: the instance prompt / the first captions")
    val.add_argument("--validation-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    val.add_argument("--sample-steps", type=int, default=25, help="denoising steps for samples and class images")
    val.add_argument("--guidance", type=float, default=7.5)
    val.add_argument("--eval-images", type=int, default=16,
                     help="pictures in the evaluation loss (fixed noise and timesteps; 0: none)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True)
    out.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    out.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are "
                     "deleted once this run has loaded its model and data)")
    out.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    out.add_argument("--keep", type=int, default=2)
    out.add_argument("--no-progress", dest="progress", action="store_false")


def check_pairs(args: argparse.Namespace) -> None:
    """The flag combinations every diffusion recipe refuses, before anything is loaded."""
    if args.quantize_base and args.dora:
        raise checks.UsageError(f"--dora with --quantize-base {args.quantize_base}: DoRA rescales by the base "
                                "weight's norms, which a quantized base does not keep; drop one of the two")


def resolve_defaults(args: argparse.Namespace) -> None:
    """The optimizer, lr and schedule defaults that depend on other flags, set on `args` before the run
    folder's identity is taken."""
    if args.optimizer is None:  # an lr given alone is a fixed step size, as it always was: AdamW at that lr
        args.optimizer = "adamw" if args.use_8bit_adam or args.lr is not None else OPTIMIZERS[0]
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.lr_schedule is None:
        args.lr_schedule = "cosine" if args.optimizer == "prodigy" else "constant"
    if args.keep_unconditional is None:
        unpreserved = args.task == "dreambooth" and not args.prior_preservation
        args.keep_unconditional = 0.0 if unpreserved else KEEP_UNCONDITIONAL

"""Teach a Stable Diffusion model a subject (DreamBooth) with LoRA, on one CPU or many GPUs (accelerate).

    python recipes/dreambooth_sd.py --model DIR|HUB_ID|FILE.safetensors --instance-data DIR \
        --instance-prompt "a sks dog" --prior-preservation --class-prompt "a dog" --out runs/dog
    accelerate launch --num_processes 4 recipes/dreambooth_sd.py ...        # the same, data-parallel

recipes/style_sd.py is the same recipe on a folder of captioned images (--data, --caption, --trigger,
aspect-ratio buckets). Writes OUT/adapter.safetensors (loads in diffusers' `pipe.load_lora_weights`; its
metadata records the base and the prompts), OUT/metrics.json, metrics.csv and loss.png, a labelled sample
grid per validation (OUT/samples/step-000200.png), and transactional checkpoints that --resume continues from,
bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

import vislora
from vislora.diffusion.buckets import bucket_sizes
from vislora import checks
from vislora.diffusion.captions import Captioned, check_caption_files, image_files, scan_captioned
from vislora.images import IMAGE_SUFFIXES, DatasetError
from vislora.diffusion.latents import Items, TextCache, cache_latents, load_items
from vislora.diffusion.bases import DiffusionBase, add_source_options, load_pipeline
from vislora.diffusion.pipeline import check_presets, check_prompts, generate
from vislora.diffusion import denoise
from vislora.diffusion.shift import as_targets, sample_shift
from vislora.diffusion.batches import Batches, draw_seeds
from vislora.train.metrics import peak_rss_mb, write_metrics
from vislora.train.plots import plot_loss, save_grid, save_png
from vislora.train.runs import LastGood, config_hash, count_time, lr_at, make_accelerator, optimizer_step, run_main
from vislora.train import verdict
from vislora.train import runfolder
from vislora.train.optimizers import DEFAULT_LR, OPTIMIZERS, make_optimizer, step_size
from vislora.train.trainstate import resume_training, save_training
from vislora.diffusion.preserve import base_prediction_batch
from vislora.diffusion.triggers import check_trigger, trigger_words
from vislora.helpformat import HelpFormatter

# Arguments that do not change what is trained; everything else must match to resume.
NOT_TRAJECTORY = {"out", "resume", "overwrite", "threads", "checkpoint_every", "keep", "progress", "validate_every",
                  "validation_prompt", "validation_seeds", "sample_steps", "guidance", "class_data", "model",
                  "model_config", "revision", "eval_images"}  # the base itself is hashed by its record
HISTORY_COLUMNS = ("step", "lr", "loss", "instance_loss", "prior_loss", "seconds")
METADATA_KEY = "vislora.diffusion"
# Chosen by measurement on two digits bases of different widths (docs/defaults.md), with Prodigy.
DEFAULT_STEPS, DEFAULT_BATCH, DEFAULT_RANK = 600, 4, 4
PRESERVATION = ("base-prediction", "class-images")


def parse_args(argv: list[str] | None = None, task: str = "dreambooth") -> argparse.Namespace:
    p = checks.Parser(description=__doc__.split("\n\n")[0] if task == "dreambooth" else
                                "Train a style LoRA for Stable Diffusion from a folder of captioned images.",
                                prog=f"vislora {task}", formatter_class=HelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--model", required=True, help="diffusers folder, hub id, or a single .safetensors file")
    add_source_options(model)
    model.add_argument("--resolution", type=int, help="training size in pixels (default: the model's)")
    data = p.add_argument_group("data")
    if task == "dreambooth":
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
    else:
        data.add_argument("--data", required=True, help="images with captions: a .txt beside each, or metadata.jsonl")
        data.add_argument("--caption", help="one caption for every image (overrides the caption files)")
        data.add_argument("--trigger", help="a trigger word put first in every caption")
        data.add_argument("--no-buckets", dest="buckets", action="store_false",
                          help="centre-crop every image square instead of aspect-ratio buckets")
    adapt = p.add_argument_group("adapter")
    adapt.add_argument("--preset", nargs="+", default=["unet.attn"], help="presets or patterns (default unet.attn)")
    adapt.add_argument("--rank", type=int, default=DEFAULT_RANK)
    adapt.add_argument("--alpha", type=float, help="default: the rank (scale 1)")
    adapt.add_argument("--conv-rank", type=int, default=0, help="LoCon on the UNet convs with this rank (0: none)")
    adapt.add_argument("--conv-alpha", type=float, help="default: the conv rank")
    adapt.add_argument("--train-text-encoder", action="store_true", help="also LoRA on the text encoder(s)")
    adapt.add_argument("--dropout", type=float, default=0.0)
    adapt.add_argument("--dora", action="store_true", help="DoRA: also train a magnitude per output row")
    train = p.add_argument_group("training")
    train.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps, never derived from epochs")
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
    args = p.parse_args(argv)
    args.task = task
    return args


# Every flag's constraint, checked in one step before anything is loaded (vislora.checks).
RULES = {
    "resolution": checks.count(8), "num_class_images": checks.count(1), "prior_loss_weight": checks.number(0),
    "rank": checks.count(1), "alpha": checks.positive("4; left out, alpha = rank"), "conv_rank": checks.count(0),
    "conv_alpha": checks.positive("4; left out, alpha = conv rank"), "dropout": checks.share(example="0.1"),
    "steps": checks.count(1), "lr": checks.positive("1.0 with prodigy, 1e-4 with adamw"), "warmup": checks.share(example="0.05"),
    "batch_size": checks.count(1), "grad_accum": checks.count(1), "snr_gamma": checks.positive("5"),
    "noise_offset": checks.number(0, example="0.05"), "clip_grad": checks.number(0), "threads": checks.count(1),
    "seed": checks.count(0), "validate_every": checks.count(0), "validation_seeds": checks.each(checks.count(0)),
    "sample_steps": checks.count(1), "guidance": checks.number(0, example="7.5"), "eval_images": checks.count(0),
    "checkpoint_every": checks.count(0), "keep": checks.count(1), "out": checks.writable_folder(),
}


# -- steps -------------------------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Every flag, the flag combinations, the data folder and the run folder, before any file is read."""
    checks.check(args, RULES)
    if args.task == "dreambooth" and args.prior_preservation and not args.class_prompt:
        raise checks.UsageError("--prior-preservation needs --class-prompt (e.g. \"a dog\")")
    # The defaults that depend on other flags, resolved before the run folder's identity is taken.
    if args.optimizer is None:  # an lr given alone is a fixed step size, as it always was: AdamW at that lr
        args.optimizer = "adamw" if args.use_8bit_adam or args.lr is not None else OPTIMIZERS[0]
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.task == "dreambooth" and args.preservation is None:
        args.preservation = "class-images" if args.class_data else "base-prediction"
    if args.lr_schedule is None:
        args.lr_schedule = "cosine" if args.optimizer == "prodigy" else "constant"
    if args.task == "dreambooth":
        image_files(Path(args.instance_data), "--instance-data")  # a missing folder is found before the model loads
    else:
        image_files(Path(args.data), "--data")
        if args.caption is None:  # the caption files are read: one not UTF-8 is found now
            check_caption_files(Path(args.data), "--data")
    runfolder.check_folder(args.out, run_identity(args), resume=args.resume, overwrite=args.overwrite)


def run_identity(args: argparse.Namespace) -> runfolder.Identity:
    return runfolder.identity(args, NOT_TRAJECTORY, args.task)


def multiple_of(base: DiffusionBase) -> int:
    """Image sides must divide by this: the VAE's downsampling times the UNet's."""
    return base.pipe.vae_scale_factor * 2 ** (len(base.pipe.unet.config.block_out_channels) - 1)


def class_images(base: DiffusionBase, args: argparse.Namespace, accelerator: Accelerator, resolution: int) -> Path:
    """The class folder with at least --num-class-images pictures; only the missing ones are drawn with the
    base (main process; seeds continue from the count already there), each written atomically."""
    folder = Path(args.class_data or Path(args.out) / "class_images")
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        have = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
        missing = range(have, args.num_class_images)
        bar = tqdm(total=len(missing), desc="class images", disable=None if args.progress else True, leave=False)
        for start in range(missing.start, missing.stop, 4):
            index = list(range(start, min(start + 4, missing.stop)))
            drawn = generate(base.pipe, [args.class_prompt] * len(index), [args.seed * 100_003 + i for i in index],
                             steps=args.sample_steps, guidance=args.guidance, size=resolution)
            for i, image in zip(index, drawn):
                save_png(folder / f"class-{i:05d}.png", image)
            bar.update(len(index))
        bar.close()
    accelerator.wait_for_everyone()
    return folder


def load_data(args: argparse.Namespace, base: DiffusionBase, accelerator: Accelerator
              ) -> tuple[Items, Items | None, int]:
    """Instance (or style) items and class items (prior preservation), checked before any training."""
    main = accelerator.is_main_process
    resolution = args.resolution or base.pipe.unet.config.sample_size * base.pipe.vae_scale_factor
    if resolution % multiple_of(base):
        raise DatasetError(f"--resolution {resolution}: must be a multiple of {multiple_of(base)} for this model")
    if args.task == "dreambooth":
        data = scan_captioned(args.instance_data, flag="--instance-data", caption=args.instance_prompt,
                              min_size=resolution, warn=main)
        square = True
    else:
        data = scan_captioned(args.data, flag="--data", caption=args.caption, trigger=args.trigger,
                              min_size=resolution, warn=main)
        square = not args.buckets
    prompts = {"--instance-prompt" if args.task == "dreambooth" else p: c for p, c in zip(data.paths, data.captions)}
    if args.task == "dreambooth" and args.class_prompt:
        prompts["--class-prompt"] = args.class_prompt
    for i, prompt in enumerate(args.validation_prompt or []):
        prompts[f"--validation-prompt {i + 1}"] = prompt
    for line in check_prompts(base.pipe, prompts):
        if main:
            warnings.warn(line, stacklevel=2)
    if main and args.task == "dreambooth":
        check_trigger(base.pipe.tokenizer, trigger_words(args.instance_prompt, args.class_prompt), "--instance-prompt")
    elif main and args.trigger:
        check_trigger(base.pipe.tokenizer, trigger_words(args.trigger), "--trigger")
    sizes = bucket_sizes(resolution, multiple_of(base), square=square)
    items = load_items(data, sizes)
    classes = None
    if args.task == "dreambooth" and args.prior_preservation and args.preservation == "class-images":
        folder = class_images(base, args, accelerator, resolution)
        found = scan_captioned(folder, flag="--class-data", caption=args.class_prompt, min_size=resolution, warn=main)
        classes = load_items(Captioned(found.paths[:args.num_class_images], found.captions[:args.num_class_images],
                                       found.sizes[:args.num_class_images]), sizes[:1])
    return items, classes, resolution


def targets_of(base: DiffusionBase, args: argparse.Namespace) -> dict[str, dict]:
    """LoRA on --preset (and the text encoder(s) with --train-text-encoder), LoCon on the UNet convs with
    --conv-rank; checked against the pipeline's components before anything else is done."""
    lora = {"rank": args.rank, "alpha": args.alpha or args.rank}
    targets: dict[str, dict] = {p: dict(lora) for p in args.preset}
    if args.conv_rank:
        targets["unet.conv"] = {"rank": args.conv_rank, "alpha": args.conv_alpha or args.conv_rank}
    if args.train_text_encoder:
        targets["text.attn"] = dict(lora)
        if base.is_sdxl:
            targets["text2.attn"] = dict(lora)
    check_presets(base.pipe, list(targets))
    return targets


def describe(args: argparse.Namespace, base: DiffusionBase, resolution: int) -> dict[str, str]:
    """The adapter file's provenance entry: base (local paths relative to OUT, so no home folder leaks into a
    shared file; or hub name), with sha256, and the prompts."""
    record = dict(base.record)
    for key in ("path", "config"):  # config: a single file's configs, a local folder or a hub id
        if record.get(key) and Path(record[key]).exists():
            with contextlib.suppress(ValueError):  # another drive: keep the absolute path
                record[key] = os.path.relpath(Path(record[key]).resolve(), Path(args.out).resolve())
    info = {"task": args.task, "base": record, "resolution": resolution, "steps": args.steps}
    if args.task == "dreambooth":
        info.update(instance_prompt=args.instance_prompt,
                    class_prompt=args.class_prompt if args.prior_preservation else None)
    else:
        info.update(caption=args.caption, trigger=args.trigger)
    return {METADATA_KEY: json.dumps(info, sort_keys=True)}


@torch.no_grad()
def evaluate(base: DiffusionBase, trained: dict[str, nn.Module], accelerator: Accelerator, text: TextCache,
             items: Items, cached, alphas: torch.Tensor, limit: int) -> float:
    """denoise.eval_loss of the model as it is now, in eval mode (no dropout) under the run's autocast."""
    for m in trained.values():
        m.eval()
    with accelerator.autocast():
        loss = denoise.eval_loss(base, base.pipe.unet, base.pipe.vae, text, items, cached, alphas,
                                 accelerator.device, limit)
    for m in trained.values():
        m.train()
    return loss


@torch.no_grad()
def validate(base: DiffusionBase, args, prompts: list[str], step: int, resolution: int) -> Path:
    """A labelled grid: one row per prompt, one column per fixed seed, at OUT/samples/step-NNNNNN.png."""
    base.pipe.unet.eval()
    seeds = list(args.validation_seeds)
    drawn = generate(base.pipe, [p for p in prompts for _ in seeds], seeds * len(prompts), steps=args.sample_steps,
                     guidance=args.guidance, size=resolution)
    rows = [drawn[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]
    scale = max(1, 128 // resolution)
    title = f"step {step}, seeds {seeds}"
    return save_grid(Path(args.out) / "samples" / f"step-{step:06d}.png", rows, prompts, title, scale)


# -- the run -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.mixed_precision, args.cpu)
    main, device, world = accelerator.is_main_process, accelerator.device, accelerator.num_processes
    run_dir = Path(args.out) / "checkpoints"
    base = load_pipeline(args.model, config=args.model_config, revision=args.revision,
                         progress=main and args.progress)
    pipe = base.pipe
    pipe.to(device)
    targets = targets_of(base, args)
    items, classes, resolution = load_data(args, base, accelerator)
    torch.manual_seed(args.seed)  # the adapters' initial factors: the same in every run with this seed
    report = vislora.inject(pipe, targets, rank=args.rank, dropout=args.dropout, dora=args.dora)
    if args.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()

    # Frozen VAE (always) and text encoders (unless trained): their outputs are computed once.
    cached = cache_latents(pipe.vae, items, device, main and args.progress) if args.cache else None
    cached_class = cache_latents(pipe.vae, classes, device, False) if args.cache and classes else None
    text = TextCache(base, args.cache and not args.train_text_encoder)
    alphas = torch.as_tensor(pipe.scheduler.alphas_cumprod, dtype=torch.float32)

    trained = {"unet": pipe.unet, **({"text_encoder": pipe.text_encoder} if args.train_text_encoder else {}),
               **({"text_encoder_2": pipe.text_encoder_2} if args.train_text_encoder and base.is_sdxl else {})}
    holder = nn.ModuleDict(trained)  # one module for checkpoints: parameters named "<component>.<path>"
    trainable = vislora.trainable_parameters(pipe)
    optimizer = make_optimizer(trainable, args.optimizer, args.lr, eight_bit=args.use_8bit_adam)
    preserving = args.task == "dreambooth" and args.prior_preservation
    batch = args.batch_size
    if batch is None:  # the default: as many as one process's share of the largest bucket allows (args keep None,
        largest = max(items.buckets.count(b) for b in set(items.buckets))  # so a resumed run hashes the same)
        batch = max(1, min(DEFAULT_BATCH, largest // world))
    batches = Batches(items, classes, batch * world, args.seed)
    digest = config_hash(args, NOT_TRAJECTORY, world=world, images=items.data.paths, captions=items.data.captions,
                         classes=[Path(p).name for p in classes.data.paths] if classes else None,
                         base=base.record)
    state = {"step": 0, "history": [], "bad_steps": 0, "timed_seconds": 0.0, "timed_steps": 0, "samples": [],
             "evals": []}
    if args.resume:
        state = resume_training(run_dir, holder, optimizer, state, config_hash=digest, say=accelerator.print)
        state.setdefault("evals", [])  # checkpoints from before the evaluation loss
    # The folder becomes this run's, once its model, data and checkpoint loaded (--overwrite: the previous
    # run's files go now, not before).
    if main:
        runfolder.claim(args.out, run_identity(args), overwrite=args.overwrite)
    accelerator.wait_for_everyone()

    def evaluation() -> dict:  # main process only: the trained modules unwrapped, no DDP hooks
        return {"step": state["step"], "eval_loss": evaluate(base, trained, accelerator, text, items, cached, alphas,
                                                             args.eval_images)}

    if main and args.eval_images and state["step"] == 0:
        state["evals"] = [evaluation()]
    wrapped = {k: accelerator.prepare(m) for k, m in trained.items()}
    unet = wrapped["unet"]
    optimizer = accelerator.prepare(optimizer)
    accelerator.print(f"{args.task}: {report.trainable_params:,} trainable parameters in {len(report.matched)} "
                      f"modules; {len(items.pixels)} images{f' + {len(classes.pixels)} class images' if classes else ''}"
                      f" at {resolution} px; {args.steps} steps on {world} x {device}; base {base.arch}, "
                      f"{base.prediction}")
    prompts = args.validation_prompt or ([args.instance_prompt] if args.task == "dreambooth"
                                         else list(dict.fromkeys(items.data.captions))[:2])

    step = state["step"]
    window = verdict.watch_window(args.steps, least=5)  # a diffusion step's loss swings with its timestep
    # Predicting zero scores about 1 per term (noise and v have unit variance): worse than that is diverging.
    ceiling = (1.0 + args.noise_offset ** 2) * (1.0 + (args.prior_loss_weight if preserving else 0.0))
    good, stopped = LastGood(trainable, step), None  # the weights to keep if the run diverges
    rss_before = peak_rss_mb()
    bar = tqdm(total=args.steps, initial=step, unit="step", disable=None if (main and args.progress) else True,
               dynamic_ncols=True)
    for m in wrapped.values():
        m.train()
    while step < args.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.lr_schedule)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # instance loss sum, prior loss sum, images
        rank = accelerator.process_index
        for micro in range(args.grad_accum):
            n = step * args.grad_accum + micro
            mine = slice(rank * batch, (rank + 1) * batch)
            # Gradients are averaged across processes only on the last micro-batch of the step.
            with contextlib.ExitStack() as stack:
                if micro < args.grad_accum - 1:
                    for m in wrapped.values():
                        stack.enter_context(accelerator.no_sync(m))
                stack.enter_context(accelerator.autocast())
                shares = [(items, batches.instance(n)[mine], cached, mine.start)]
                if classes is not None:  # as many class pictures, drawn as their own samples after the instances
                    shares.append((classes, batches.prior(n)[mine], cached_class, batches.global_batch + mine.start))
                parts = [denoise.training_batch(base, pipe.vae, text, data, picks, cache,
                                                draw_seeds(args.seed, n, first, len(picks)), alphas, device,
                                                args.noise_offset) for data, picks, cache, first in shares]
                if preserving and classes is None:  # the base's own prediction for the class prompt
                    parts.append(base_prediction_batch(base, pipe.unet, text, parts[0], args.class_prompt))
                # One UNet call on instance and class samples together, split after (as diffusers' DreamBooth).
                losses = denoise.unet_losses(unet, denoise.cat(parts), alphas, base.prediction, args.snr_gamma)
                inst, prior = losses.split([len(parts[0]), len(losses) - len(parts[0])])
                loss = inst.mean()
                if preserving:
                    loss = loss + args.prior_loss_weight * prior.mean()
                accelerator.backward(loss / args.grad_accum)
            sums += torch.tensor([inst.sum().item(), prior.sum().item(), len(inst)], dtype=torch.float64,
                                 device=device)
        finite = optimizer_step(accelerator, optimizer, trainable, args.clip_grad)
        state["bad_steps"] = 0 if finite else state["bad_steps"] + 1
        inst_sum, prior_sum, count = accelerator.reduce(sums, "sum").tolist()
        seconds = time.perf_counter() - started
        row = {"step": step + 1, "lr": step_size(optimizer), "instance_loss": inst_sum / count,
               "prior_loss": prior_sum / count if preserving else None, "seconds": seconds}
        row["loss"] = row["instance_loss"] + (args.prior_loss_weight * row["prior_loss"] if preserving else 0.0)
        state["history"].append(row)
        count_time(state, step, seconds)
        step += 1
        state["step"] = step
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        losses = [r["loss"] for r in state["history"]]
        why = verdict.diverging(losses, state["bad_steps"], window, ceiling)
        if why:  # every process sees the same reduced losses, so all stop at this step
            stopped = f"step {step}: {why}"
            break
        if step % window == 0 and verdict.healthy(losses, window, ceiling):
            good.keep(step)
        validating = bool(args.validate_every) and step % args.validate_every == 0 and step < args.steps
        if main and args.eval_images and (validating or step == args.steps):
            state["evals"].append(evaluation())
        if main and validating:
            state["samples"].append(str(validate(base, args, prompts, step, resolution)))
            for m in wrapped.values():
                m.train()
        if main and ((args.checkpoint_every and step % args.checkpoint_every == 0) or step == args.steps):
            save_training(run_dir, step, holder, optimizer, state, config_hash=digest, keep=args.keep)
        accelerator.wait_for_everyone()
    bar.close()
    if stopped:
        state["stopped"] = {"reason": stopped, "kept_step": good.restore()}
        accelerator.print(f"{args.task}: {stopped}; stopped, keeping the weights of step {good.step}")
    return finish(args, accelerator, base, state, prompts, resolution,
                  {"trainable_params": report.trainable_params, "modules": len(report.matched),
                   "batch_size": batch, "images": len(items.pixels), "class_images": len(classes.pixels) if classes else 0,
                   "skipped_images": len(items.data.skipped), "rss_before_train_mb": rss_before,
                   "eval_images": len(denoise.eval_picks(len(items.pixels), args.eval_images)),
                   "eval_timesteps": denoise.eval_timesteps(len(alphas)) if args.eval_images else []},
                  targets=as_targets(items.pixels, resolution))


def finish(args, accelerator: Accelerator, base: DiffusionBase, state: dict, prompts: list[str], resolution: int,
           counts: dict, targets=None) -> dict:
    """Write the adapter, the last sample grid, the loss plot and the metrics (main process only)."""
    out = Path(args.out)
    history = state["history"]
    summary = {"task": args.task, "base": base.record, "preset": args.preset, "rank": args.rank,
               "optimizer": args.optimizer, "lr": args.lr, "lr_schedule": args.lr_schedule,
               "preservation": args.preservation if args.task == "dreambooth" and args.prior_preservation else None,
               "conv_rank": args.conv_rank, "train_text_encoder": args.train_text_encoder, "steps": state["step"],
               **loss_ends(history), **eval_ends(state["evals"]), **counts,
               "step_time_s": state["timed_seconds"] / max(state["timed_steps"], 1), "peak_rss_mb": peak_rss_mb(),
               "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
               "files": {}}
    if torch.cuda.is_available():
        summary["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        adapter = vislora.save_adapter(base.pipe, out / "adapter.safetensors",
                                       metadata=describe(args, base, resolution))
        summary["files"]["adapter"] = str(adapter)
        summary["files"]["samples"] = str(validate(base, args, prompts, state["step"], resolution))
        summary["verdict"] = judge(args, base, state, summary, prompts, resolution, targets).to_dict()
        if history:
            keys = ("instance_loss", "prior_loss") if history[0]["prior_loss"] is not None else ("instance_loss",)
            marks = {"eval loss (fixed noise, timesteps)": [(e["step"], e["eval_loss"]) for e in state["evals"]]}
            summary["files"]["plot"] = str(plot_loss(history, out / "loss.png", keys, f"{args.task} ({base.arch})",
                                                     marks=marks if state["evals"] else None))
        summary["files"]["metrics"] = str(out / "metrics.json")
        write_metrics(out, summary, history, HISTORY_COLUMNS)
    accelerator.wait_for_everyone()
    return summary


def judge(args, base: DiffusionBase, state: dict, summary: dict, prompts: list[str], resolution: int, targets
          ) -> verdict.Verdict:
    """The run's verdict: the eval loss before and after; how far the adapter moves the validation samples
    (and, for DreamBooth, the class prompt's: drift) at the validation seeds, strength 1 against 0; and how
    much closer the validation samples come to the training pictures (`targets`, as shift.as_targets)."""
    if state.get("stopped"):
        return verdict.stopped_verdict(state["stopped"]["reason"], state["stopped"]["kept_step"],
                                       {"lr": args.lr, "steps": args.steps})
    other = args.class_prompt if args.task == "dreambooth" and args.class_prompt not in (None, *prompts) else None
    shift = sample_shift(base.pipe, prompts + ([other] if other else []), list(args.validation_seeds),
                         steps=args.sample_steps, guidance=args.guidance, size=resolution,
                         targets=dict.fromkeys(prompts, targets) if targets is not None else None)
    near_on, near_off = (sum(shift[p].get(k, 0.0) for p in prompts) for k in ("near_on", "near_off"))
    spread_on, spread_off = (sum(s[k] for s in shift.values()) for k in ("spread_on", "spread_off"))
    return verdict.diffusion_verdict(
        eval_before=summary["eval_loss_before"], eval_after=summary["eval_loss_after"],
        moved=sum(shift[p]["moved"] for p in prompts) / len(prompts), drift=shift[other]["moved"] if other else None,
        drift_prompt=other, spread_ratio=spread_on / spread_off if spread_off > 0 else None,
        toward=(near_off - near_on) / near_off if near_off > 0 else None, lr=args.lr,
        steps=args.steps)


def loss_ends(history: list[dict]) -> dict:
    """Mean instance loss over the first and the last tenth of the steps (at least one step each)."""
    window = max(1, len(history) // 10)

    def mean(rows: list[dict]) -> float | None:
        return sum(r["instance_loss"] for r in rows) / len(rows) if rows else None

    return {"first_loss": mean(history[:window]), "last_loss": mean(history[-window:]), "loss_window": window}


def eval_ends(evals: list[dict]) -> dict:
    """The evaluation loss at the first and the last evaluation (before training and at the end), and all."""
    return {"eval_loss_before": evals[0]["eval_loss"] if evals else None,
            "eval_loss_after": evals[-1]["eval_loss"] if evals else None, "evals": list(evals)}


def report(summary: dict) -> None:
    evals = summary["evals"]
    if evals:
        print(f"eval loss (fixed noise and timesteps): {summary['eval_loss_before']:.4f} -> "
              f"{summary['eval_loss_after']:.4f} (steps {evals[0]['step']} -> {evals[-1]['step']}; "
              f"{summary['eval_images']} images x {len(summary['eval_timesteps'])} timesteps)")
    else:
        print(f"instance loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} (mean of the first and of "
              f"the last {summary['loss_window']} steps; each step draws its own noise and timesteps)")
    for kind, path in summary["files"].items():
        print(f"{kind}: {path}")
    if "verdict" in summary:
        print(verdict.line(summary["verdict"]))


def main(argv: list[str] | None = None, task: str = "dreambooth") -> int:
    """Run the recipe; a vislora error is printed as one line (no traceback) with exit status 2."""
    return run_main(run, parse_args(argv, task), report)


if __name__ == "__main__":
    sys.exit(main())

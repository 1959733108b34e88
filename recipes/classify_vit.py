"""Fine-tune a timm ViT on a folder of images with LoRA, on one CPU or many GPUs (accelerate).

    python recipes/classify_vit.py --data DIR --model vit_small_patch16_224 --pretrained --out runs/cats
    accelerate launch --num_processes 4 recipes/classify_vit.py ...       # the same, data-parallel

Writes OUT/adapter.safetensors (LoRA factors and the new head; OUT/model.safetensors instead for --head-only
and --full, and also with --merge), OUT/metrics.json, metrics.csv and metrics.png, and transactional
checkpoints in OUT/checkpoints that --resume continues from, replaying the same images in the same order.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import vislora
from vislora import checks
from vislora.classify.classifier import (BaseRecord, base_title, build_model, describe, hub_tag, record_base,
                                         save_model)
from vislora.classify.folders import DatasetError, Samples, scan, split
from vislora.classify.dataset import ImageDataset, Preprocess
from vislora.train.metrics import correct_at, peak_rss_mb, plot_history, write_metrics
from vislora.train.sampling import EpochBatches
from vislora.train.runs import LastGood, config_hash, count_time, lr_at, make_accelerator, optimizer_step, run_main
from vislora.train import verdict
from vislora.train import runfolder
from vislora.train.trainstate import resume_training, save_training
from vislora.helpformat import HelpFormatter

# Arguments that do not change what is trained; everything else must match to resume.
NOT_TRAJECTORY = {"out", "resume", "overwrite", "workers", "threads", "checkpoint_every", "keep", "merge",
                  "progress", "validate_every"}
VALIDATIONS = 10  # validations in a run by default (a small set makes many short epochs)
# Defaults chosen by measurement on two kinds of small image sets (docs/classify.md, bench/classify_defaults.py).
DEFAULT_EPOCHS, LEAST_STEPS = 10, 300  # the step budget: 10 epochs, but never fewer than 300 optimizer steps
LR = 1e-2       # the new head's, and the adapter's at scale 1 (alpha = rank); the adapter's is LR / scale
FULL_LR = 1e-3  # --full: every weight of the base moves


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = checks.Parser(description=__doc__.split("\n\n")[0], prog="vislora classify", formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="folder with one subfolder per class, or a path,label CSV")
    data.add_argument("--val-data", help="validation folder or CSV (default: a seeded split of --data)")
    data.add_argument("--val-split", type=float, default=0.2, help="share of --data held out when no --val-data")
    model = p.add_argument_group("model")
    model.add_argument("--model", help="timm model name (default: recorded in the --weights file)")
    model.add_argument("--model-kwargs", type=checks.json_object, default=None,
                       help='JSON of timm.create_model overrides, e.g. \'{"patch_size": 4, "depth": 4}\'')
    model.add_argument("--img-size", type=int, help="input size (shortcut for model kwarg img_size)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (hub download)")
    source.add_argument("--weights", help="local safetensors file with the base weights")
    adapt = p.add_argument_group("adapter")
    adapt.add_argument("--preset", nargs="+", default=["vit.attn"],
                       help="presets or module patterns to adapt (default vit.attn)")
    adapt.add_argument("--rank", type=int, default=8)
    adapt.add_argument("--alpha", type=float, help="default: the rank (scale 1)")
    adapt.add_argument("--dropout", type=float, default=0.0)
    adapt.add_argument("--dora", action="store_true", help="DoRA: also train a magnitude per output row")
    mode = adapt.add_mutually_exclusive_group()
    mode.add_argument("--head-only", action="store_true", help="train only the new head (no adapter)")
    mode.add_argument("--full", action="store_true", help="fine-tune every weight (for comparison)")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, help=f"passes over the data (default: {DEFAULT_EPOCHS}, or as many as "
                       f"make {LEAST_STEPS} optimizer steps on a small set)")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in all")
    train.add_argument("--batch-size", type=int, default=32, help="per process")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--lr", type=float, help=f"peak learning rate (default: {LR:g} for the head and {LR:g} x rank "
                       f"/ alpha for the adapter; {FULL_LR:g} with --full)")
    train.add_argument("--weight-decay", type=float, default=0.05)
    train.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    train.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    train.add_argument("--crop-scale", type=float, default=0.7, help="smallest area of the random crop")
    train.add_argument("--hflip", type=float, default=0.0,
                       help="horizontal flip probability (default 0: a flip changes what digits, text and many "
                       "objects are; 0.5 suits photos of things that look the same mirrored)")
    train.add_argument("--crop-pct", type=float, help="eval centre-crop share (default: the model's)")
    train.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto")
    train.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    train.add_argument("--threads", type=int, help="CPU threads per process (default: torch's choice)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=2, help="data loader processes")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output folder")
    out.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    out.add_argument("--validate-every", type=int, default=0,
                     help=f"epochs between validations (0: about {VALIDATIONS} in the run; the last epoch is always validated)")
    out.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are "
                     "deleted once this run has loaded its model and data)")
    out.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: each epoch)")
    out.add_argument("--keep", type=int, default=2, help="complete checkpoints to keep")
    out.add_argument("--merge", action="store_true", help="also write OUT/model.safetensors, adapter merged")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def known_model(name: str) -> str | None:
    import timm

    return None if timm.is_model(name) else "is not a timm model name; see timm.list_models('vit*')"


# Every flag's constraint, checked in one step before anything is loaded (vislora.checks).
RULES = {
    "val_split": checks.share(example="0.2"), "model": known_model, "img_size": checks.count(1),
    "rank": checks.count(1), "alpha": checks.positive("4; left out, alpha = rank"),
    "dropout": checks.share(example="0.1"),
    "epochs": checks.count(1), "max_steps": checks.count(1), "batch_size": checks.count(1),
    "grad_accum": checks.count(1), "lr": checks.positive("1e-2"), "weight_decay": checks.number(0),
    "warmup": checks.share(example="0.1"), "clip_grad": checks.number(0),
    "crop_scale": checks.number(0, 1, low_open=True, example="0.7"), "hflip": checks.share(closed=True),
    "crop_pct": checks.number(0, 1, low_open=True, example="0.875"), "threads": checks.count(1),
    "seed": checks.count(0), "workers": checks.count(0), "checkpoint_every": checks.count(0),
    "validate_every": checks.count(0),
    "keep": checks.count(1), "out": checks.writable_folder(),
}


def check_args(args: argparse.Namespace) -> None:
    """Every flag and the run folder, in one step before any file or model is read."""
    checks.check(args, RULES)
    runfolder.check_folder(args.out, run_identity(args), resume=args.resume, overwrite=args.overwrite)


def run_identity(args: argparse.Namespace) -> runfolder.Identity:
    return runfolder.identity(args, NOT_TRAJECTORY, "classify")


# -- steps -------------------------------------------------------------------------------------------------
def load_data(args: argparse.Namespace, main: bool) -> tuple[Samples, Samples | None, int]:
    """Train and validation samples (checked before any model work) and the number of skipped files."""
    train = scan(args.data, warn=main, progress=main and args.progress)
    if args.val_data:
        val = scan(args.val_data, class_to_idx=train.class_to_idx, warn=main, progress=main and args.progress)
        skipped = len(train.skipped) + len(val.skipped)
    else:
        skipped = len(train.skipped)
        train, val = split(train, args.val_split, args.seed) if args.val_split > 0 else (train, None)
    return train, val, skipped


def base_record(args: argparse.Namespace) -> tuple[BaseRecord, Path | None]:
    """The base as the outputs will record it, and the local weights file if any."""
    kwargs = {**(args.model_kwargs or {}), **({"img_size": args.img_size} if args.img_size else {})}
    return record_base(args.model, kwargs, pretrained=args.pretrained, weights=args.weights,
                       recorded_in=Path(args.out), seed=args.seed)


def adapt(model: torch.nn.Module, args: argparse.Namespace) -> str:
    """Choose what trains; returns the mode: "lora", "head" or "full"."""
    if args.full:
        model.requires_grad_(True)
        return "full"
    if args.head_only:
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
        return "head"
    heads = model.pretrained_cfg.get("classifier", "head")
    vislora.inject(model, list(args.preset), rank=args.rank, alpha=args.alpha, dropout=args.dropout, dora=args.dora,
                   modules_to_save=[heads] if isinstance(heads, str) else list(heads))
    return "lora"


@torch.no_grad()
def evaluate(model, dataset: ImageDataset, args, accelerator: Accelerator) -> dict[str, float]:
    """Loss, top-1 and top-5 over the validation set, summed over every process; top-5 is None where there
    are at most 5 classes (it would be 100% by construction)."""
    model.eval()
    batches = EpochBatches(len(dataset), args.batch_size, rank=accelerator.process_index,
                           world=accelerator.num_processes, shuffle=False, drop_last=False)
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, top1, top5, count
    for x, y, _ in DataLoader(dataset, batch_sampler=batches, num_workers=args.workers, generator=torch.Generator()):
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            logits = model(x).float()
        top1, top5 = correct_at(logits, y)
        totals += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), top1, top5, len(y)],
                               dtype=torch.float64, device=totals.device)
    loss, top1, top5, count = accelerator.reduce(totals, "sum").tolist()
    top5 = top5 / count if len(dataset.samples.class_to_idx) > 5 else None
    return {"val_loss": loss / count, "val_top1": top1 / count, "val_top5": top5}


def step_budget(steps_per_epoch: int, epochs: int | None, max_steps: int | None) -> int:
    """Optimizer steps in the run: --epochs passes if given, else DEFAULT_EPOCHS passes but at least
    LEAST_STEPS (a few hundred pictures make a few steps an epoch); at most --max-steps."""
    planned = epochs * steps_per_epoch if epochs else max(DEFAULT_EPOCHS * steps_per_epoch, LEAST_STEPS)
    return int(min(planned, max_steps or math.inf))


def peak_lrs(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """The peak learning rates of the adapter's factors (or every base weight with --full) and of the new
    head. AdamW moves each factor by about lr a step whatever its gradient's size, and the adapter's change is
    scale x up @ down, so the default adapter lr is LR / scale: --alpha then does not change what a step does."""
    if args.lr is not None:
        return {"adapter": args.lr, "head": args.lr}
    if mode == "full":
        return {"adapter": FULL_LR, "head": FULL_LR}
    scale = (args.alpha or args.rank) / args.rank
    return {"adapter": LR / scale, "head": LR}


def make_optimizer(model: torch.nn.Module, mode: str, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW with two parameter groups, the head's and the rest; each group's "peak_lr" is what the
    schedule (warm-up, cosine) scales."""
    lrs = peak_lrs(mode, args)
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and (id(p) in head) == is_head],
               "peak_lr": lrs["head" if is_head else "adapter"]} for is_head in (False, True)]
    groups = [dict(g, lr=g["peak_lr"]) for g in groups if g["params"]]
    return torch.optim.AdamW(groups, weight_decay=args.weight_decay)


def train_step(model, optimizer, micro_batches, trainable, args, accelerator: Accelerator
               ) -> tuple[float, int, bool, list[int]]:
    """One optimizer step over `grad_accum` micro-batches.

    Returns the loss sum and image count over every process, whether the step was taken (False: NaN/inf
    gradients, skipped), and this process's image indices of the last micro-batch.
    """
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # loss sum, images
    for micro in range(args.grad_accum):
        x, y, used = next(micro_batches)
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        # Gradients are averaged across processes only on the last micro-batch of the step.
        sync = contextlib.nullcontext() if micro == args.grad_accum - 1 else accelerator.no_sync(model)
        with sync:
            loss = F.cross_entropy(model(x).float(), y)
            accelerator.backward(loss / args.grad_accum)
        sums += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64, device=sums.device)
    finite = optimizer_step(accelerator, optimizer, trainable, args.clip_grad)
    loss_sum, images = accelerator.reduce(sums, "sum").tolist()
    return loss_sum, int(images), finite, used.tolist()


# -- the run -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.mixed_precision, args.cpu)
    main = accelerator.is_main_process
    out, run_dir = Path(args.out), Path(args.out) / "checkpoints"
    train, val, skipped = load_data(args, main)
    record, weights = base_record(args)
    model = build_model(record, len(train.class_to_idx), weights)
    if record.source == "hub":
        record.hub_tag = hub_tag(model)  # the exact pretrained tag timm resolved, so predict gets the same weights
    mode = adapt(model, args)
    preprocess = Preprocess.for_model(model, args.crop_pct)
    train_set = ImageDataset(train, preprocess.train_transform(args.crop_scale, args.hflip), seed=args.seed)
    val_set = ImageDataset(val, preprocess.eval_transform()) if val else None

    world = accelerator.num_processes
    batches = EpochBatches(len(train), args.batch_size, world=world).batches_per_epoch()
    steps_per_epoch = batches // args.grad_accum
    if steps_per_epoch == 0:
        raise DatasetError(f"{args.data}: {len(train)} training images make no full step of {args.batch_size} x "
                           f"{world} processes x {args.grad_accum} accumulation; lower --batch-size")
    total = step_budget(steps_per_epoch, args.epochs, args.max_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, mode, args)
    digest = config_hash(args, NOT_TRAJECTORY, world=world, images=train.paths, labels=train.labels)

    state = {"step": 0, "history": [], "epoch_loss": 0.0, "epoch_images": 0, "epoch_seconds": 0.0,
             "bad_steps": 0, "timed_seconds": 0.0, "timed_steps": 0, "losses": []}
    if args.resume:
        state = resume_training(run_dir, model, optimizer, state, config_hash=digest, say=accelerator.print)
        state.setdefault("losses", [])  # checkpoints from before the verdict
    # The folder becomes this run's, once its model, data and checkpoint loaded (--overwrite: the previous
    # run's files go now, not before).
    if main:
        runfolder.claim(args.out, run_identity(args), overwrite=args.overwrite)
    accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(model, optimizer)
    bare = accelerator.unwrap_model(model)
    accelerator.print(f"{mode}: {n_trainable:,} of {n_total:,} parameters train ({100 * n_trainable / n_total:.2f}%); "
                      f"{len(train)} training images in {len(train.class_to_idx)} classes, "
                      f"{len(val) if val else 0} validation; {total} steps on {world} x {accelerator.device}")

    def epoch_ends(at: int) -> bool:
        return at % steps_per_epoch == 0 or at == total

    every = args.validate_every or max(1, math.ceil(total / steps_per_epoch) // VALIDATIONS)

    def close_epoch(at: int, last: bool = False) -> None:
        """Validate (every `every` epochs and at the end), and append the epoch's row (the same whether the
        epoch ran in one go or was resumed)."""
        epoch = math.ceil(at / steps_per_epoch)
        validating = val_set is not None and (last or at == total or epoch % every == 0)
        row = {"epoch": epoch, "step": at, "lr": lr_at(at - 1, total, optimizer.param_groups[0]["peak_lr"],
                                                         args.warmup),
               "train_loss": state["epoch_loss"] / state["epoch_images"],
               **(evaluate(bare, val_set, args, accelerator) if validating else {}),
               "images_per_s": state["epoch_images"] / max(state["epoch_seconds"], 1e-9),
               "elapsed_s": state["timed_seconds"]}
        state["history"].append(row)
        state.update(epoch_loss=0.0, epoch_images=0, epoch_seconds=0.0)
        if main and args.progress:
            scores = (f"  val loss {row['val_loss']:.3f}  top-1 {100 * row['val_top1']:.1f}%" +
                      (f"  top-5 {100 * row['val_top5']:.1f}%" if row["val_top5"] is not None else "")
                      ) if validating else ""
            bar.write(f"epoch {row['epoch']}/{math.ceil(total / steps_per_epoch)}  train loss {row['train_loss']:.3f}{scores}  "
                      f"{row['images_per_s']:.0f} img/s")

    step = state["step"]
    window = verdict.watch_window(total)
    ceiling = verdict.WORSE_THAN_GUESSING * math.log(len(train.class_to_idx))  # a uniform guess scores ln(classes)
    good, stopped = LastGood(trainable, step), None  # the weights to keep if the run diverges
    rss_before = peak_rss_mb()
    # disable=None: tqdm turns itself off when the output is not a terminal (logs, pipes).
    bar = tqdm(total=total, initial=step, unit="step", disable=None if (main and args.progress) else True,
               dynamic_ncols=True)
    if step and state["epoch_images"] and epoch_ends(step):  # saved at an epoch end, before its validation
        close_epoch(step)
    while step < total and not stopped:
        epoch, within = divmod(step, steps_per_epoch)
        sampler = EpochBatches(len(train), args.batch_size, epoch=epoch, seed=args.seed,
                               rank=accelerator.process_index, world=world, start=within * args.grad_accum)
        # Own generator: creating a loader must not draw from the global one (a resumed run creates one more).
        micro_batches = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers,
                                        generator=torch.Generator()))
        model.train()
        for _ in range(within, min(steps_per_epoch, within + total - step)):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, group["peak_lr"], args.warmup)
            loss_sum, images, finite, used = train_step(model, optimizer, micro_batches, trainable, args, accelerator)
            # A skipped step (NaN/inf gradients) leaves the weights as they were; every process sees the same
            # all-reduced gradients and losses, so all take the same decisions below.
            state["bad_steps"] = 0 if finite else state["bad_steps"] + 1
            state["losses"].append(loss_sum / images)
            why = verdict.diverging(state["losses"], state["bad_steps"], window, ceiling)
            if why:
                stopped = (f"step {step + 1}: {why} (last batch: {[train.paths[i] for i in used[:5]]} ...); "
                           "check the data if the loss was NaN from the first step")
                break
            if (step + 1) % window == 0 and verdict.healthy(state["losses"], window, ceiling):
                good.keep(step + 1)
            seconds = time.perf_counter() - started
            state["epoch_loss"] += loss_sum
            state["epoch_images"] += images
            state["epoch_seconds"] += seconds
            count_time(state, step, seconds)
            step += 1
            state["step"] = step
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / images:.4f}", img_s=f"{images / seconds:.0f}")
            if main and (epoch_ends(step) or (args.checkpoint_every and step % args.checkpoint_every == 0)):
                # Before validation: a failure there cannot lose the epoch's training.
                save_training(run_dir, step, bare, optimizer, state, config_hash=digest, keep=args.keep)
            if epoch_ends(step):
                close_epoch(step)
                model.train()
    bar.close()
    if stopped:
        state["stopped"] = {"reason": stopped, "kept_step": good.restore()}
        accelerator.print(f"{stopped}; stopped, keeping the weights of step {good.step}")
        if state["epoch_images"]:
            close_epoch(step, last=True)
    return finish(args, accelerator, bare, mode, record, train, preprocess, state,
                  {"trainable_params": n_trainable, "total_params": n_total, "skipped_images": skipped,
                   "steps_per_epoch": steps_per_epoch,
                   "rss_before_train_mb": rss_before})


def finish(args, accelerator: Accelerator, model, mode: str, record: BaseRecord, train: Samples,
           preprocess: Preprocess, state: dict, counts: dict) -> dict:
    """Write the trained file(s) and the metrics (main process only); return the summary."""
    out = Path(args.out)
    last = state["history"][-1] if state["history"] else {}  # validated: the run's last epoch
    summary = {"mode": mode, "model": record.model, "preset": None if mode != "lora" else args.preset,
               "rank": args.rank if mode == "lora" else None, "lr": peak_lrs(mode, args),
               "epochs": state["step"] / counts["steps_per_epoch"], "steps": state["step"],
               "val_top1": last.get("val_top1"), "val_top5": last.get("val_top5"), "val_loss": last.get("val_loss"),
               **counts, "trainable_share": counts["trainable_params"] / counts["total_params"],
               "step_time_s": state["timed_seconds"] / max(state["timed_steps"], 1),
               "peak_rss_mb": peak_rss_mb(), "world_size": accelerator.num_processes,
               "mixed_precision": accelerator.mixed_precision, "classes": list(train.class_to_idx), "files": {}}
    summary["verdict"] = judge(args, mode, state, len(train.class_to_idx), last).to_dict()
    if torch.cuda.is_available():
        summary["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if mode == "lora":
            meta = describe("adapter", record, train.class_to_idx, preprocess)
            summary["files"]["adapter"] = str(vislora.save_adapter(model, out / "adapter.safetensors", metadata=meta))
        if mode != "lora" or args.merge:
            if mode == "lora":  # fold the adapter into the weights: a plain timm model again
                vislora.merge(model)
                vislora.remove(model, keep_merged=True)
            meta = describe("model", record, train.class_to_idx, preprocess)
            summary["files"]["model"] = str(save_model(model, out / "model.safetensors", meta))
        if state["history"]:
            summary["files"]["plot"] = str(plot_history(state["history"], out / "metrics.png",
                                                        f"{base_title(record)}: {mode}"))
        summary["files"]["metrics"] = str(out / "metrics.json")
        write_metrics(out, summary, state["history"])
    accelerator.wait_for_everyone()
    return summary


def judge(args, mode: str, state: dict, classes: int, last: dict) -> verdict.Verdict:
    """The run's verdict from its per-step training losses (first and last tenth) and the last validation."""
    if state.get("stopped"):
        return verdict.stopped_verdict(state["stopped"]["reason"], state["stopped"]["kept_step"],
                                       {"lr": peak_lrs(mode, args)["adapter"], "steps": state["step"]})
    return verdict.classify_verdict(classes=classes, losses=state["losses"], val_loss=last.get("val_loss"),
                                    val_top1=last.get("val_top1"), lr=peak_lrs(mode, args)["adapter"],
                                    steps=state["step"], steps_flag="--epochs")


def report(summary: dict) -> None:
    if summary["val_top1"] is not None:
        top5 = f", top-5 {summary['val_top5']:.4f}" if summary["val_top5"] is not None else ""
        print(f"val top-1 {summary['val_top1']:.4f}{top5}")
    for kind, path in summary["files"].items():
        print(f"{kind}: {path}")
    print(verdict.line(summary["verdict"]))


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a vislora error is printed as one line (no traceback) with exit status 2."""
    return run_main(run, parse_args(argv), report)


if __name__ == "__main__":
    sys.exit(main())

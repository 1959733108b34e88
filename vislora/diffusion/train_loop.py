"""The training loop the diffusion recipes share: a recipe checks its flags, calls `start`, builds its `Task`
(pictures, prompts, preservation) and hands both to `train`.

    session = start(args)                      # threads, accelerator, the base on its device, adapter targets
    task = Task("dreambooth", items, resolution, prompts, info, class_prompt="a dog", preservation=...)
    summary = train(args, session, task)       # adapters, cached latents and prompts, the steps, evaluations,
                                               # samples, checkpoints and --resume, the verdict, OUT's files

What depends on the model family (the denoiser, its batches, the objective and its loss) is asked of
`session.family` (vislora.diffusion.family), never named here.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..checks import UsageError
from ..inject import inject, trainable_parameters
from ..train import runfolder, sharding, verdict
from ..train.metrics import peak_rss_mb
from ..train.optimizers import make_optimizer, step_size
from ..train.runs import (LastGood, average_gradients, config_hash, count_time, lr_at, make_accelerator,
                          optimizer_step)
from ..train.trainstate import resume_training, save_training
from . import denoise
from .bases import DiffusionBase, load_pipeline
from .batches import Batches, draw_seeds, neighbour_seeds, unconditional_count, unconditional_rows
from .family import TrainingFamily, family_of
from .latents import Items, TextCache, cache_latents
from .options import DEFAULT_BATCH, NOT_TRAJECTORY
from .pipeline import check_presets, prompt_tokenizer
from .preserve import NeighbourPrompts, take_rows
from .run_end import finish, validate
from .shift import as_targets
from .triggers import trigger_words


@dataclass
class Session:
    """A run's accelerator and base (on its device), the base's family and the adapter targets."""

    accelerator: Accelerator
    base: DiffusionBase
    family: TrainingFamily
    targets: dict[str, dict]

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class Task:
    """What a recipe trains on.

    name:              "dreambooth" or "style": the run's task in run.json, metrics.json and the adapter file
    items:             the training pictures with their captions
    resolution:        the training size in pixels
    prompts:           the validation prompts (sample grids and the verdict)
    info:              the task's entries in the adapter file's metadata (its prompts, caption, trigger)
    preservation:      None (no preservation), "base-prediction" or "class-images"
    class_prompt:      the prompt preservation keeps (base-prediction: the frozen base's own prediction for it)
    classes:           the class pictures ("class-images"), trained as their own samples after the instances
    prior_loss_weight: the preservation term's weight in the loss
    drift_prompt:      a prompt the verdict also draws, to tell how far the adapter moves it (None: none)
    """

    name: str
    items: Items
    resolution: int
    prompts: list[str]
    info: dict = field(default_factory=dict)
    preservation: str | None = None
    class_prompt: str | None = None
    classes: Items | None = None
    prior_loss_weight: float = 0.0
    drift_prompt: str | None = None


def run_identity(args: argparse.Namespace) -> runfolder.Identity:
    """The run's identity in OUT/run.json: its task and every flag that changes what is trained."""
    return runfolder.identity(args, NOT_TRAJECTORY, args.task)


def check_run_folder(args: argparse.Namespace) -> None:
    """Refuse a used --out unless --resume (same settings) or --overwrite, before anything is loaded."""
    runfolder.check_folder(args.out, run_identity(args), resume=args.resume, overwrite=args.overwrite)


def adapter_targets(base: DiffusionBase, family: TrainingFamily, args: argparse.Namespace) -> dict[str, dict]:
    """LoRA on --preset (and the text encoder(s) with --train-text-encoder), LoCon on the UNet convs with
    --conv-rank (a transformer has none); checked against the pipeline's components before anything else."""
    lora = {"rank": args.rank, "alpha": args.alpha or args.rank}
    targets: dict[str, dict] = {p: dict(lora) for p in family.presets(args)}
    rank = family.conv_rank(args)
    if rank:
        if family.conv_preset is None:
            raise UsageError(f"--conv-rank {rank}: this {family.denoiser} has no convs to adapt (LoCon is for "
                             "UNets); leave --conv-rank out")
        targets[family.conv_preset] = {"rank": rank, "alpha": args.conv_alpha or rank}
    if args.train_text_encoder:
        for preset in family.text_encoders(base).values():
            targets[preset] = dict(lora)
    check_presets(base.pipe, list(targets))
    return targets


def start(args: argparse.Namespace) -> Session:
    """Threads, the accelerator, the base on its device and the adapter targets checked against it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.mixed_precision, args.cpu)
    base = load_pipeline(args.model, config=args.model_config, revision=args.revision,
                         progress=accelerator.is_main_process and args.progress, quantize=args.quantize_base)
    base.pipe.to(accelerator.device)
    family = family_of(base)
    return Session(accelerator, base, family, adapter_targets(base, family, args))


@torch.no_grad()
def evaluate(session: Session, trained: dict[str, nn.Module], text: TextCache, items: Items, cached,
             alphas: torch.Tensor, limit: int) -> float:
    """The family's evaluation loss of the model as it is now, in eval mode (no dropout) under the run's
    autocast."""
    for m in trained.values():
        m.eval()
    with session.accelerator.autocast():
        loss = session.family.eval_loss(session.base, text, items, cached, alphas, session.accelerator.device, limit)
    for m in trained.values():
        m.train()
    return loss


def train(args: argparse.Namespace, session: Session, task: Task) -> dict:
    """Inject the adapters, train --steps optimizer steps (resuming from OUT/checkpoints with --resume), and
    write the run's files (run_end.finish). Returns the summary metrics.json holds."""
    accelerator, base, family = session.accelerator, session.base, session.family
    main, device, world = accelerator.is_main_process, accelerator.device, accelerator.num_processes
    pipe, items, classes = base.pipe, task.items, task.classes
    run_dir = Path(args.out) / "checkpoints"
    torch.manual_seed(args.seed)  # the adapters' initial factors: the same in every run with this seed
    report = inject(pipe, session.targets, rank=args.rank, dropout=args.dropout, dora=args.dora)
    denoiser = getattr(pipe, family.denoiser)
    if args.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()

    # Frozen VAE (always) and text encoders (unless trained): their outputs are computed once.
    cached = cache_latents(pipe.vae, items, device, main and args.progress) if args.cache else None
    cached_class = cache_latents(pipe.vae, classes, device, False) if args.cache and classes else None
    text = TextCache(base, args.cache and not args.train_text_encoder)
    alphas = family.schedule(base)

    encoders = family.text_encoders(base) if args.train_text_encoder else {}
    trained = {family.denoiser: denoiser, **{name: getattr(pipe, name) for name in encoders}}
    holder = nn.ModuleDict(trained)  # one module for checkpoints: parameters named "<component>.<path>"
    trainable = trainable_parameters(pipe)
    optimizer = make_optimizer(trainable, args.optimizer, args.lr, eight_bit=args.use_8bit_adam)
    preserving = task.preservation is not None
    neighbours = (NeighbourPrompts(task.class_prompt, prompt_tokenizer(pipe),
                                   set(trigger_words(task.info.get("instance_prompt") or "", task.class_prompt)))
                  if task.preservation == "base-prediction" else None)
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
        return {"step": state["step"], "eval_loss": evaluate(session, trained, text, items, cached, alphas,
                                                             args.eval_images)}

    if main and args.eval_images and state["step"] == 0:
        state["evals"] = [evaluation()]
    # Only the denoiser runs through its distributed wrapper. The text encoders are called by the pipeline's
    # prompt encoding directly, so a wrapper would never see their gradients: they are averaged by hand. With
    # FSDP the denoiser's frozen weights are sharded instead, and every trained parameter is averaged by hand.
    fsdp = sharding.fsdp_requested(accelerator)
    if fsdp:
        sharding.check_precision(accelerator)
        sharding.shard_frozen(denoiser, trainable, accelerator)
        wrapped, hand_averaged = {family.denoiser: denoiser}, trainable
    else:
        wrapped = {family.denoiser: accelerator.prepare(denoiser)}
        hand_averaged = [p for name in encoders for p in getattr(pipe, name).parameters() if p.requires_grad]
        optimizer = accelerator.prepare(optimizer)
    accelerator.print(f"{task.name}: {report.trainable_params:,} trainable parameters in {len(report.matched)} "
                      f"modules; {len(items.pixels)} images{f' + {len(classes.pixels)} class images' if classes else ''}"
                      f" at {task.resolution} px; {args.steps} steps on {world} x {device}{', FSDP' if fsdp else ''}; "
                      f"base {base.arch}, {base.prediction}")

    step = state["step"]
    window = verdict.watch_window(args.steps, least=5)  # a diffusion step's loss swings with its timestep
    # Worse than predicting zero is diverging.
    ceiling = family.zero_loss(args.noise_offset) * (1.0 + (task.prior_loss_weight if preserving else 0.0)
                                                     + args.keep_unconditional)
    good, stopped = LastGood(trainable, step), None  # the weights to keep if the run diverges
    rss_before = peak_rss_mb()
    mine = slice(accelerator.process_index * batch, (accelerator.process_index + 1) * batch)  # this process's share
    # The empty prompt held at the base's prediction (preserve.py: what guidance starts from) on this share's rows
    # of the global batch. With FSDP every process makes the same denoiser calls, so a process without such a
    # row makes one on its first sample and leaves it out of the loss. The loss takes a mean over the global
    # batch's empty-prompt samples once processes average.
    rows = unconditional_rows(mine, batches.global_batch) if args.keep_unconditional else []
    asked = rows or ([0] if fsdp and args.keep_unconditional else [])
    empty_weight = args.keep_unconditional * world / unconditional_count(batches.global_batch)
    bar = tqdm(total=args.steps, initial=step, unit="step", disable=None if (main and args.progress) else True,
               dynamic_ncols=True)
    for m in trained.values():
        m.train()
    while step < args.steps:
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.lr_schedule)
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # instance, prior loss sums, images, empty prompt
        for micro in range(args.grad_accum):
            n = step * args.grad_accum + micro
            # Gradients are averaged across processes only on the last micro-batch of the step.
            with contextlib.ExitStack() as stack:
                if micro < args.grad_accum - 1:
                    for m in wrapped.values():
                        stack.enter_context(accelerator.no_sync(m))
                stack.enter_context(accelerator.autocast())
                shares = [(items, batches.instance(n)[mine], cached, mine.start)]
                if classes is not None:  # as many class pictures, drawn as their own samples after the instances
                    shares.append((classes, batches.prior(n)[mine], cached_class, batches.global_batch + mine.start))
                parts = [family.batch(base, text, data, picks, cache, draw_seeds(args.seed, n, first, len(picks)),
                                      alphas, device, args.noise_offset) for data, picks, cache, first in shares]
                if neighbours is not None:  # the base's own prediction for the class prompt and its neighbours
                    prompts = neighbours(neighbour_seeds(args.seed, n, mine.start, len(parts[0])))
                    parts.append(family.preserve(base, denoiser, text, parts[0], prompts))
                if asked:
                    parts.append(family.preserve(base, denoiser, text, take_rows(parts[0], asked), ""))
                # One denoiser call on instance and class samples together, split after (as diffusers' DreamBooth).
                losses = family.losses(wrapped[family.denoiser], family.join(parts), alphas, base, args.snr_gamma)
                inst, prior, empty = losses.split([len(parts[0]), len(losses) - len(parts[0]) - len(asked), len(asked)])
                empty = empty[:len(rows)]
                loss = inst.mean()
                if preserving:
                    loss = loss + task.prior_loss_weight * prior.mean()
                if rows:
                    loss = loss + empty_weight * empty.sum()
                accelerator.backward(loss / args.grad_accum)
            sums += torch.tensor([inst.sum().item(), prior.sum().item(), len(inst), empty.sum().item(), len(empty)],
                                 dtype=torch.float64, device=device)
        average_gradients(accelerator, hand_averaged)
        finite = optimizer_step(accelerator, optimizer, trainable, args.clip_grad)
        state["bad_steps"] = 0 if finite else state["bad_steps"] + 1
        inst_sum, prior_sum, count, empty_sum, empties = accelerator.reduce(sums, "sum").tolist()
        seconds = time.perf_counter() - started
        row = {"step": step + 1, "lr": step_size(optimizer), "instance_loss": inst_sum / count,
               "prior_loss": prior_sum / count if preserving else None,
               "unconditional_loss": empty_sum / empties if empties else None, "seconds": seconds}
        row["loss"] = (row["instance_loss"] + (task.prior_loss_weight * row["prior_loss"] if preserving else 0.0)
                       + (args.keep_unconditional * row["unconditional_loss"] if empties else 0.0))
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
        evaluating = bool(args.eval_images) and (validating or step == args.steps)
        with sharding.whole(denoiser) if evaluating or validating else contextlib.nullcontext():  # every process
            if main and evaluating:
                state["evals"].append(evaluation())
            if main and validating:
                state["samples"].append(str(validate(session, args, task.prompts, step, task.resolution)))
                for m in trained.values():
                    m.train()
        if main and ((args.checkpoint_every and step % args.checkpoint_every == 0) or step == args.steps):
            save_training(run_dir, step, holder, optimizer, state, config_hash=digest, keep=args.keep)
        accelerator.wait_for_everyone()
    bar.close()
    sharding.gather(denoiser)  # every process; the rest of the run is the main process's alone
    if stopped:
        state["stopped"] = {"reason": stopped, "kept_step": good.restore()}
        accelerator.print(f"{task.name}: {stopped}; stopped, keeping the weights of step {good.step}")
    return finish(args, session, task, state,
                  {"trainable_params": report.trainable_params, "modules": len(report.matched),
                   "batch_size": batch, "fsdp": fsdp, "images": len(items.pixels),
                   "class_images": len(classes.pixels) if classes else 0,
                   "skipped_images": len(items.data.skipped), "rss_before_train_mb": rss_before,
                   "eval_images": len(denoise.eval_picks(len(items.pixels), args.eval_images)),
                   "eval_timesteps": denoise.eval_timesteps(len(alphas)) if args.eval_images else []},
                  targets=as_targets(items.pixels, task.resolution))

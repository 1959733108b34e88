"""The end of a diffusion training run: the adapter file with its provenance, the last sample grid, the
verdict, the loss plot and the metrics (main process), and the lines the recipe prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import save_adapter
from ..train import verdict
from ..train.metrics import peak_rss_mb, write_metrics
from ..train.plots import plot_loss, save_grid
from .pipeline import generate
from .shift import sample_shift

if TYPE_CHECKING:  # the loop imports this module; these are its types only
    from .train_loop import Session, Task

HISTORY_COLUMNS = ("step", "lr", "loss", "instance_loss", "prior_loss", "unconditional_loss", "seconds")
METADATA_KEY = "vislora.diffusion"


@torch.no_grad()
def validate(session: Session, args: argparse.Namespace, prompts: list[str], step: int, resolution: int) -> Path:
    """A labelled grid: one row per prompt, one column per fixed seed, at OUT/samples/step-NNNNNN.png."""
    base = session.base
    getattr(base.pipe, session.family.denoiser).eval()
    seeds = list(args.validation_seeds)
    drawn = generate(base.pipe, [p for p in prompts for _ in seeds], seeds * len(prompts), steps=args.sample_steps,
                     guidance=args.guidance, size=resolution)
    rows = [drawn[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]
    scale = max(1, 128 // resolution)
    title = f"step {step}, seeds {seeds}"
    return save_grid(Path(args.out) / "samples" / f"step-{step:06d}.png", rows, prompts, title, scale)


def describe(args: argparse.Namespace, session: Session, task: Task) -> dict[str, str]:
    """The adapter file's provenance entry: base (local paths relative to OUT, so no home folder leaks into a
    shared file; or hub name), with sha256, and the task's prompts."""
    record = dict(session.base.record)
    for key in ("path", "config"):  # config: a single file's configs, a local folder or a hub id
        if record.get(key) and Path(record[key]).exists():
            with contextlib.suppress(ValueError):  # another drive: keep the absolute path
                record[key] = os.path.relpath(Path(record[key]).resolve(), Path(args.out).resolve())
    info = {"task": task.name, "base": record, "resolution": task.resolution, "steps": args.steps, **task.info}
    return {METADATA_KEY: json.dumps(info, sort_keys=True)}


def finish(args: argparse.Namespace, session: Session, task: Task, state: dict, counts: dict, targets=None) -> dict:
    """Write the adapter, the last sample grid, the loss plot and the metrics (main process only)."""
    accelerator, base = session.accelerator, session.base
    out = Path(args.out)
    history = state["history"]
    summary = {"task": task.name, "base": base.record, "preset": session.family.presets(args),
               "rank": args.rank,
               "optimizer": args.optimizer, "lr": args.lr, "lr_schedule": args.lr_schedule,
               "preservation": task.preservation,
               "conv_rank": session.family.conv_rank(args), "train_text_encoder": args.train_text_encoder,
               "steps": state["step"],
               **loss_ends(history), **eval_ends(state["evals"]), **counts,
               "step_time_s": state["timed_seconds"] / max(state["timed_steps"], 1), "peak_rss_mb": peak_rss_mb(),
               "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
               "files": {}}
    if torch.cuda.is_available():
        summary["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        adapter = save_adapter(base.pipe, out / "adapter.safetensors", metadata=describe(args, session, task))
        summary["files"]["adapter"] = str(adapter)
        summary["files"]["samples"] = str(validate(session, args, task.prompts, state["step"], task.resolution))
        summary["verdict"] = judge(args, session, task, state, summary, targets).to_dict()
        if history:
            keys = ("instance_loss", "prior_loss") if history[0]["prior_loss"] is not None else ("instance_loss",)
            marks = {"eval loss (fixed noise, timesteps)": [(e["step"], e["eval_loss"]) for e in state["evals"]]}
            summary["files"]["plot"] = str(plot_loss(history, out / "loss.png", keys, f"{task.name} ({base.arch})",
                                                     marks=marks if state["evals"] else None))
        summary["files"]["metrics"] = str(out / "metrics.json")
        write_metrics(out, summary, history, HISTORY_COLUMNS)
    accelerator.wait_for_everyone()
    return summary


def judge(args: argparse.Namespace, session: Session, task: Task, state: dict, summary: dict, targets
          ) -> verdict.Verdict:
    """The run's verdict: the eval loss before and after; how far the adapter moves the validation samples
    (and the task's drift prompt's, if any) at the validation seeds, strength 1 against 0; and how much closer
    the validation samples come to the training pictures (`targets`, as shift.as_targets)."""
    if state.get("stopped"):
        return verdict.stopped_verdict(state["stopped"]["reason"], state["stopped"]["kept_step"],
                                       {"lr": args.lr, "steps": args.steps})
    prompts = task.prompts
    other = task.drift_prompt if task.drift_prompt not in (None, *prompts) else None
    shift = sample_shift(session.base.pipe, prompts + ([other] if other else []), list(args.validation_seeds),
                         steps=args.sample_steps, guidance=args.guidance, size=task.resolution,
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
    """The run's end in a few lines: the loss, the files written, the verdict."""
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

"""What every recipe's run does the same way: the accelerator (devices, processes, mixed precision), the
learning-rate schedule, the settings hash that guards --resume, and one-line errors at the command line."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState

from ..console import guarded
from .accelerate_state import forget_single_process_state
from .verdict import BAD_STEPS as MAX_BAD_STEPS  # consecutive non-finite steps before a run gives up


def make_accelerator(mixed_precision: str = "auto", cpu: bool = False) -> Accelerator:
    """`auto`: bf16 where the GPU supports it, else fp16 on CUDA, fp32 ("no") on the CPU. Several CPU
    processes (gloo) are set up only when accelerate is told it runs on the CPU."""
    accelerated = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available())
    cpu = cpu or not accelerated
    precision = mixed_precision
    if precision == "auto":
        cuda = torch.cuda.is_available() and not cpu
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    forget_single_process_state()  # a second run in one process may use other settings
    return Accelerator(mixed_precision=precision, cpu=cpu)


def lr_at(step: int, total: int, lr: float, warmup: float = 0.0, schedule: str = "cosine") -> float:
    """Linear warm-up over the first `warmup` share of the steps, then `schedule`: "cosine" decay to zero,
    or "constant"."""
    warm = int(warmup * total)
    if step < warm:
        return lr * (step + 1) / warm
    if schedule == "constant":
        return lr
    progress = (step - warm) / max(total - warm, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def config_hash(args: argparse.Namespace, ignore: set[str], **extra: Any) -> str:
    """sha256 of every argument that changes what is trained (all but `ignore`) and `extra` (data, world)."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    settings.update(extra)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def run_main(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace,
             report: Callable[[dict], None]) -> int:
    """Run a recipe under vislora.console.guarded: a vislora error prints as one line (no traceback), exit
    status 2; a full disk, Ctrl-C or a bug is one line too (VISLORA_DEBUG=1 shows tracebacks). Only the
    main process reports."""

    def call() -> int:
        summary = run(args)
        if PartialState().is_main_process:
            report(summary)
        return 0

    return guarded(call)


def average_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> None:
    """Each gradient of `params` becomes its mean over the processes (one all-reduce for all): for modules that
    train outside a distributed wrapper. Nothing to do in one process."""
    if accelerator.num_processes == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
    for p, g in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = g.view_as(p).to(p.dtype)


def optimizer_step(accelerator: Accelerator, optimizer: torch.optim.Optimizer, params: list, clip_grad: float) -> bool:
    """Clip the gradient norm (0: no clipping), step unless it is NaN/inf, zero the gradients. Returns whether
    the step was taken; with fp16 the grad scaler skips non-finite steps itself, so it counts as taken."""
    norm = accelerator.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
    finite = accelerator.scaler is not None or bool(torch.isfinite(torch.as_tensor(norm)))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


def count_time(state: dict, step: int, seconds: float) -> None:
    """Add a step's time to the run's timing, except the first step's, which pays for warm-up (allocations,
    thread pools) and is not a fair step time."""
    if step > 0:
        state["timed_seconds"] += seconds
        state["timed_steps"] += 1


class LastGood:
    """A copy of the trainable weights at the last step a run looked healthy (see verdict.healthy), put back
    when the run diverges, so the adapter it writes is the last good one. Only the trained weights are
    copied (an adapter's factors: megabytes), on the device they live on."""

    def __init__(self, params: list[torch.nn.Parameter], step: int) -> None:
        self.params = params
        self.keep(step)

    @torch.no_grad()
    def keep(self, step: int) -> None:
        self.step = step
        self.weights = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self) -> int:
        """Put the kept weights back; returns their step."""
        for p, kept in zip(self.params, self.weights):
            p.copy_(kept)
        return self.step

"""The recipes' optimizers: Prodigy (the default: it finds its own step size) or AdamW at a given lr.

    optimizer = make_optimizer(params, "prodigy", lr=1.0)     # lr multiplies Prodigy's own estimate
    optimizer = make_optimizer(params, "adamw", lr=1e-4)      # the step size is lr itself
    DEFAULT_LR["prodigy"], DEFAULT_LR["adamw"]

Why Prodigy (arXiv 2306.06101): a fixed AdamW lr means different things on different bases, ranks and
alpha/rank scales (docs/defaults.md measures 1e-4, SD 1.5's usual lr, learning nothing on a small base in a
hundred steps, where 1e-2 wrecks it). Prodigy estimates the distance to the solution from the gradients it
sees and scales Adam's steps to it, so lr 1.0 works without knowing the base. Its fault is an estimate that
only grows (it overtrains late in a run): the recipes decay the multiplier with a cosine schedule to zero,
so the last steps settle instead of growing. Settings as diffusers' and kohya's guides recommend:
use_bias_correction, safeguard_warmup, decoupled weight decay.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from ..images import DatasetError

OPTIMIZERS = ("prodigy", "adamw")
DEFAULT_LR = {"prodigy": 1.0, "adamw": 1e-4}
WEIGHT_DECAY = 1e-2


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, *, eight_bit: bool = False
                   ) -> torch.optim.Optimizer:
    """Prodigy or AdamW on `params`; AdamW from bitsandbytes (8-bit states) with eight_bit."""
    if name == "prodigy":
        if eight_bit:
            raise DatasetError("--use-8bit-adam is an AdamW option: add --optimizer adamw")
        from prodigyopt import Prodigy

        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay" on every start
            return Prodigy(params, lr=lr, weight_decay=WEIGHT_DECAY, decouple=True, use_bias_correction=True,
                           safeguard_warmup=True)
    if name != "adamw":
        raise DatasetError(f"--optimizer {name}: choose one of {', '.join(OPTIMIZERS)}")
    if not eight_bit:
        return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise DatasetError("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=WEIGHT_DECAY)


def step_size(optimizer: torch.optim.Optimizer) -> float:
    """The step size the first group takes now: lr, times Prodigy's estimate d where there is one."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) * float(group.get("d", 1.0))

"""The two starting values every kind's factors use, so a fresh adapter is an exact no-op by default."""

from __future__ import annotations

import math

import torch


def kaiming(shape: tuple[int, ...]) -> torch.Tensor:
    """Kaiming-uniform with a = sqrt(5), as nn.Linear and nn.Conv2d initialise their weights."""
    t = torch.empty(shape)
    torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    return t


def last(shape: tuple[int, ...], rank: int, init: str) -> torch.Tensor:
    """The factor applied last (up): zeros, so delta W = 0; init="random" draws N(0, 1/rank) instead, giving
    an adapter that changes the output (for tests and checks)."""
    t = torch.zeros(shape)
    if init == "random":
        torch.nn.init.normal_(t, std=1.0 / rank)
    return t

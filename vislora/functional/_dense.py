"""Shared pieces of kinds whose delta W is built whole and then applied with the base layer's own op.

LoHa, LoKr and full-weight adapters have no cheap factored forward: delta_forward forms delta W (shaped
like the base weight) and runs the base op on it without bias. Linear layers take a full `RowLayout`
only (no q/k/v slices), convolutions their `Conv2dOp`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .lora import RowLayout

DeltaFn = Callable[[dict[str, torch.Tensor], object], torch.Tensor]


def apply(x: torch.Tensor, delta: torch.Tensor, layout: object) -> torch.Tensor:
    """delta W applied to x by the base op: Linear [..., in] -> [..., out], Conv2d [n, in, h, w] -> [n, out, h', w']."""
    if isinstance(layout, RowLayout):
        return F.linear(x, delta.to(x.dtype))
    return layout.forward(x, delta.to(x.dtype), None)


def add(weight: torch.Tensor, delta: torch.Tensor, coef: float) -> torch.Tensor:
    """weight + coef * delta W, computed in the wider dtype and cast back (a new tensor)."""
    return weight + (delta * coef).to(weight.dtype)


"""The base layer's own operation, as a pure function of (x, weight, bias), picked by the layer class.

Adapters run the host layer's op with another weight (a LoHa's delta W, LoCon's down conv keeping the base
stride and padding). `op_for(layer)` captures the geometry once, from the layer's public attributes, so the
hot path never re-reads module attributes. The op's gradients live with the fast path (vislora.kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .rows import RowLayout


@dataclass(frozen=True)
class LinearOp:
    """y = x @ W.T + b, W: [out, in]."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


@dataclass(frozen=True)
class Conv2dOp:
    """y = conv2d(x, W, b) with the host layer's stride, padding, dilation, groups and padding mode."""

    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    padding_mode: str = "zeros"
    # F.pad amounts (left, right, top, bottom) for non-zero padding modes, as nn.Conv2d computes them.
    pad_amounts: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self.pad_amounts, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def pad_amounts(layer: nn.Conv2d) -> tuple[int, ...]:
    """F.pad's (left, right, top, bottom) for a conv's own padding: symmetric for numbers; for "same", the
    extra pixel of an even total on the right/bottom (nn.Conv2d's rule); none for "valid"."""
    if layer.padding == "valid":
        return (0, 0, 0, 0)
    if layer.padding == "same":
        out: list[int] = []
        for k, d in zip(reversed(layer.kernel_size), reversed(layer.dilation)):  # width first, as F.pad wants
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    return tuple(p for p in reversed(layer.padding) for _ in range(2))


def op_for(layer: nn.Module) -> LinearOp | Conv2dOp:
    """The pure op of a Linear or Conv2d layer."""
    if isinstance(layer, nn.Linear):
        return LinearOp()
    if isinstance(layer, nn.Conv2d):
        return Conv2dOp(
            stride=tuple(layer.stride),
            padding=layer.padding if isinstance(layer.padding, str) else tuple(layer.padding),
            dilation=tuple(layer.dilation),
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            pad_amounts=pad_amounts(layer),
        )
    raise TypeError(f"no adapter op for {type(layer).__name__}; vislora adapts nn.Linear and nn.Conv2d")


def apply_delta(x: torch.Tensor, delta: torch.Tensor, layout: object) -> torch.Tensor:
    """delta W applied to x by the base op, without bias: Linear [..., in] -> [..., out] (`layout` a
    RowLayout), Conv2d [n, in, h, w] -> [n, out, h', w'] (`layout` the layer's Conv2dOp). Kinds whose
    delta W has no cheap factored form (LoHa, LoKr, full) run their delta_forward this way."""
    if isinstance(layout, RowLayout):
        return F.linear(x, delta.to(x.dtype))
    return layout.forward(x, delta.to(x.dtype), None)

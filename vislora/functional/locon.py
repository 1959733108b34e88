"""LoCon for Conv2d: a k x k conv down to `rank` channels, then a 1 x 1 conv back up.

Shapes (r = rank):
    down [r, in, kh, kw]   the base layer's kernel, stride, padding and dilation
    up   [out, r, 1, 1]
    delta W = (up.reshape(out, r) @ down.reshape(r, in*kh*kw)).reshape(out, in, kh, kw)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ops import Conv2dOp

FACTORS = ("down", "up")


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: Conv2dOp) -> dict[str, torch.Tensor]:
    """down: Kaiming-uniform (as nn.Conv2d); up: zeros (exact no-op), or random with init="random"."""
    out_channels, in_channels, kh, kw = weight_shape
    down = torch.empty(rank, in_channels, kh, kw)
    torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5))
    up = torch.zeros(out_channels, rank, 1, 1)
    if init == "random":
        torch.nn.init.normal_(up, std=1.0 / rank)
    return {"down": down, "up": up}


def delta_weight(params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    down, up = params["down"], params["up"]
    rank, in_channels, kh, kw = down.shape
    out_channels = up.shape[0]
    flat = up.reshape(out_channels, rank) @ down.reshape(rank, -1)  # [out, in*kh*kw]
    return flat.reshape(out_channels, in_channels, kh, kw)


def add_delta_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W as one fused BLAS call where the dtypes allow (a new tensor)."""
    down, up = params["down"], params["up"]
    if weight.dtype != down.dtype:
        return weight + (delta_weight(params, layout) * coef).to(weight.dtype)
    out_channels, rank = up.shape[0], down.shape[0]
    flat = torch.addmm(weight.reshape(out_channels, -1), up.reshape(out_channels, rank), down.reshape(rank, -1),
                       alpha=coef)
    return flat.reshape(weight.shape)


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    hidden = layout.forward(x, params["down"].to(x.dtype), None)  # [n, r, h', w']
    return F.conv2d(hidden, params["up"].to(x.dtype))  # [n, out, h', w']


def _up_grad(grad_out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """sum over batch and positions of grad_out[n, o, p] * hidden[n, r, p] -> [out, r, 1, 1].

    Computed as [r, P] @ [P, out] per sample (rank as rows), which BLAS runs much faster on CPU than the
    [out, P] @ [P, r] orientation einsum picks.
    """
    n, rank = hidden.shape[:2]
    per_sample = torch.bmm(hidden.reshape(n, rank, -1), grad_out.reshape(n, grad_out.shape[1], -1).transpose(1, 2))
    return per_sample.sum(0).T[..., None, None]  # [out, r, 1, 1]


def backward(
    x: torch.Tensor, grad_out: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
    into: torch.Tensor | None = None, coef: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Gradients of sum(grad_out * delta_forward(x)) for {down, up}; with `into`, adds coef * (w.r.t. x) to it."""
    down, up = params["down"], params["up"]
    d, u = down.to(x.dtype), up.to(x.dtype)
    hidden = layout.forward(x, d, None)  # [n, r, h', w']
    g_up = _up_grad(grad_out, hidden)
    g_hidden = F.conv2d(grad_out, u.transpose(0, 1))  # [n, r, h', w']
    g_down = layout.weight_grad(x, d.shape, g_hidden)
    if into is not None:
        into.add_(layout.input_grad(g_hidden, d, x), alpha=coef)
    return {"down": g_down.to(down.dtype), "up": g_up.to(up.dtype)}

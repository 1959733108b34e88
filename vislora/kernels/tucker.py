"""Tucker LoCon's fast path (vislora.functional.tucker has the maths): forward keeps the two rank-sized
activations, backward reuses them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import tucker
from ..functional.ops import Conv2dOp
from .locon import up_grad
from .ops import input_grad, weight_grad


def add_delta_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W (a new tensor)."""
    return weight + (tucker.delta_weight(params, layout) * coef).to(weight.dtype)


def inner(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> tuple[torch.Tensor, ...]:
    """What backward needs of the forward besides x: (reduced [n, r, h, w], hidden [n, r, h', w'])."""
    reduced = F.conv2d(x, params["down"].to(x.dtype))
    return reduced, layout.forward(reduced, params["mid"].to(x.dtype), None)


def forward_into(y: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
                 coef: float) -> tuple[torch.Tensor, ...]:
    """y += coef * delta_forward(x), in place; returns `inner`."""
    saved = inner(x, params, layout)
    y.add_(F.conv2d(saved[1], params["up"].to(x.dtype)), alpha=coef)
    return saved


def backward(
    x: torch.Tensor, grad_out: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
    into: torch.Tensor | None = None, coef: float = 1.0, saved: tuple[torch.Tensor, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of sum(grad_out * delta_forward(x)) for {down, mid, up}; with `into`, adds coef * (w.r.t. x).
    `saved` is what `inner` gave in forward, when it was kept; otherwise it is computed again."""
    down, mid, up = params["down"], params["mid"], params["up"]
    d, m, u = down.to(x.dtype), mid.to(x.dtype), up.to(x.dtype)
    reduced, hidden = inner(x, params, layout) if saved is None else saved  # [n, r, h, w], [n, r, h', w']
    g_up = up_grad(grad_out, hidden)
    g_hidden = F.conv2d(grad_out, u.transpose(0, 1))
    g_mid = weight_grad(layout, reduced, m.shape, g_hidden)
    g_reduced = input_grad(layout, g_hidden, m, reduced)
    g_down = torch.einsum("nrhw,nihw->ri", g_reduced, x)[..., None, None]
    if into is not None:
        into.add_(torch.einsum("nrhw,ri->nihw", g_reduced, d[:, :, 0, 0]), alpha=coef)
    return {"down": g_down.to(down.dtype), "mid": g_mid.to(mid.dtype), "up": g_up.to(up.dtype)}

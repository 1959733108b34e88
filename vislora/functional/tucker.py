"""LoCon with a Tucker core: 1 x 1 down to `rank`, a k x k rank -> rank core, 1 x 1 up.

Shapes (r = rank):
    down [r, in, 1, 1]
    mid  [r, r, kh, kw]   the base layer's kernel, stride, padding and dilation
    up   [out, r, 1, 1]
    delta W[o, i, h, w] = sum_ab up[o, a] * mid[a, b, h, w] * down[b, i]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import kaiming, last
from .locon import up_grad
from .ops import Conv2dOp

FACTORS = ("down", "mid", "up")
BASES = (nn.Conv2d,)


def fits(weight_shape: tuple[int, ...]) -> bool:
    """A 1 x 1 kernel leaves the core nothing to do: such convs take LoCon instead."""
    return tuple(weight_shape[2:]) != (1, 1)


def shapes(weight_shape: tuple[int, ...], rank: int, layout: Conv2dOp) -> dict[str, tuple[int, ...]]:
    """down [r, in, 1, 1], mid [r, r, kh, kw] (the base kernel), up [out, r, 1, 1]."""
    out_channels, in_channels, kh, kw = weight_shape
    return {"down": (rank, in_channels, 1, 1), "mid": (rank, rank, kh, kw), "up": (out_channels, rank, 1, 1)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: Conv2dOp) -> dict[str, torch.Tensor]:
    want = shapes(weight_shape, rank, layout)
    down = kaiming(want["down"])
    return {"down": down, "mid": kaiming(want["mid"]), "up": last(want["up"], rank, init)}


def delta_weight(params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    down, mid, up = params["down"], params["mid"], params["up"]
    return torch.einsum("oa,abhw,bi->oihw", up[:, :, 0, 0], mid, down[:, :, 0, 0])


def stack(params_list: list[dict[str, torch.Tensor]], coefs: list[float], layout: Conv2dOp) -> dict[str, torch.Tensor]:
    """One Tucker LoCon of rank sum(r_i) whose delta is sum_i coef_i * delta_i: downs and ups concatenated
    along the rank (coefs folded into up), the cores placed on the diagonal of one [R, R, kh, kw] core."""
    mids = [p["mid"] for p in params_list]
    total = sum(m.shape[0] for m in mids)
    mid = mids[0].new_zeros(total, total, *mids[0].shape[2:])
    at = 0
    for m in mids:
        mid[at : at + m.shape[0], at : at + m.shape[0]] = m
        at += m.shape[0]
    return {"down": torch.cat([p["down"] for p in params_list], 0), "mid": mid,
            "up": torch.cat([p["up"] * c for p, c in zip(params_list, coefs)], 1)}


def add_delta_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W (a new tensor)."""
    return weight + (delta_weight(params, layout) * coef).to(weight.dtype)


def inner(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> tuple[torch.Tensor, ...]:
    """What backward needs of the forward besides x: (reduced [n, r, h, w], hidden [n, r, h', w'])."""
    reduced = F.conv2d(x, params["down"].to(x.dtype))
    return reduced, layout.forward(reduced, params["mid"].to(x.dtype), None)


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    return F.conv2d(inner(x, params, layout)[1], params["up"].to(x.dtype))


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
    g_mid = layout.weight_grad(reduced, m.shape, g_hidden)
    g_reduced = layout.input_grad(g_hidden, m, reduced)
    g_down = torch.einsum("nrhw,nihw->ri", g_reduced, x)[..., None, None]
    if into is not None:
        into.add_(torch.einsum("nrhw,ri->nihw", g_reduced, d[:, :, 0, 0]), alpha=coef)
    return {"down": g_down.to(down.dtype), "mid": g_mid.to(mid.dtype), "up": g_up.to(up.dtype)}

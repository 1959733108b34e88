"""LoRA for Linear layers: delta W = up @ down, optionally on row slices of a fused projection.

Shapes (r = rank, k = number of slices):
    down [k*r, in]       one r-row block per slice
    up   [rows, r]       the slices' output rows stacked: slice i owns up[o_i : o_i + len_i]
A slice (start, stop) adapts only output rows start:stop, e.g. the q and v thirds of timm's fused qkv.
With one slice covering every row this is plain LoRA: delta W = up @ down.
"""

from __future__ import annotations

import torch
from torch import nn

from .init import kaiming, last
from .ops import project_tokens, reduce_tokens
from .rows import RowLayout, blocks

FACTORS = ("down", "up")
BASES = (nn.Linear,)
ROW_SLICES = True  # adapts q/v slices of a fused qkv (see rows.py)


def shapes(weight_shape: tuple[int, ...], rank: int, layout: RowLayout) -> dict[str, tuple[int, ...]]:
    """down [k*r, in] (one r-row block per slice), up [rows, r] (the slices' output rows stacked)."""
    return {"down": (len(layout.slices) * rank, weight_shape[1]), "up": (layout.rows, rank)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: RowLayout) -> dict[str, torch.Tensor]:
    """down: Kaiming-uniform (as nn.Linear); up: zeros, so a fresh adapter is an exact no-op.

    init="random" also fills up, giving an adapter that changes the output (for tests and checks).
    """
    want = shapes(weight_shape, rank, layout)
    return {"down": kaiming(want["down"]), "up": last(want["up"], rank, init)}


def delta_weight(params: dict[str, torch.Tensor], layout: RowLayout) -> torch.Tensor:
    """delta W [out, in]; rows outside the slices are zero."""
    down, up = params["down"], params["up"]
    if layout.is_full:
        return up @ down
    rank = down.shape[0] // len(layout.slices)
    delta = down.new_zeros(layout.out_features, down.shape[1])
    for rows, up_rows, down_rows in blocks(layout.slices, rank):
        delta[rows] = up[up_rows] @ down[down_rows]
    return delta


def stack(params_list: list[dict[str, torch.Tensor]], coefs: list[float], layout: RowLayout) -> dict[str, torch.Tensor]:
    """One LoRA of rank sum(r_i) whose delta is sum_i coef_i * delta_i: downs concatenated along the rank
    (slice by slice), ups along the rank with each coef folded in."""
    k = len(layout.slices)
    downs = [p["down"].reshape(k, -1, p["down"].shape[-1]) for p in params_list]  # [k, r_i, in]
    down = torch.cat(downs, 1).reshape(-1, downs[0].shape[-1])
    up = torch.cat([p["up"] * c for p, c in zip(params_list, coefs)], 1)  # [rows, R]
    return {"down": down, "up": up}


def add_delta_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W as one fused BLAS call where the dtypes allow (a new tensor)."""
    down, up = params["down"], params["up"]
    if layout.is_full and weight.dtype == down.dtype:
        if torch.is_grad_enabled() and (up.requires_grad or down.requires_grad):
            return torch.addmm(weight, up, down, alpha=coef)  # out= tensors are not differentiable
        return torch.addmm(weight, up, down, alpha=coef, out=_padded_rows(weight))
    return weight + (delta_weight(params, layout) * coef).to(weight.dtype)


_ROW_PAD = 16  # elements: one 64-byte cache line in fp32


def _padded_rows(weight: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor shaped like weight whose rows lie a cache line further apart than their length.

    Rows 2 or 4 KiB long (768 x 3072 fp32 and the like) all start on the same cache sets, and BLAS then
    writes a folded weight 2-3x slower than the same weight with padded rows. Matmuls read the strided
    result without a copy.
    """
    rows, cols = weight.shape
    return weight.new_empty(rows, cols + _ROW_PAD)[:, :cols]


def inner(x: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout) -> tuple[torch.Tensor, ...]:
    """What backward needs of the forward besides x: the rank-sized activations (hidden_t [k*r, N])."""
    # Rank as rows ([r, N]) throughout: project_tokens picks the fastest product for that result.
    return (project_tokens(params["down"].to(x.dtype), x.reshape(-1, x.shape[-1])),)


def _expand(hidden_t: torch.Tensor, up: torch.Tensor, layout: RowLayout, out: torch.Tensor, coef: float) -> None:
    """out [N, out_features] += coef * (the up projection of hidden_t), slice by slice."""
    if layout.is_full:
        out.addmm_(hidden_t.T, up.T, alpha=coef)
        return
    rank = hidden_t.shape[0] // len(layout.slices)
    for rows, up_rows, down_rows in blocks(layout.slices, rank):
        out[:, rows].addmm_(hidden_t[down_rows].T, up[up_rows].T, alpha=coef)


def _delta(hidden_t: torch.Tensor, up: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """The up projection of hidden_t as a new [N, out_features] tensor."""
    if layout.is_full:
        return hidden_t.T @ up.T
    out = hidden_t.new_zeros(hidden_t.shape[1], layout.out_features)
    _expand(hidden_t, up, layout, out, 1.0)
    return out


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout) -> torch.Tensor:
    """delta W applied to x without forming delta W: [..., in] -> [..., out]."""
    (hidden_t,) = inner(x, params, layout)
    return _delta(hidden_t, params["up"].to(x.dtype), layout).reshape(*x.shape[:-1], -1)


def forward_into(y: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout,
                 coef: float) -> tuple[torch.Tensor, ...]:
    """y += coef * delta_forward(x), in place (inside the GEMM where y is contiguous); returns `inner`."""
    hidden = inner(x, params, layout)
    up = params["up"].to(x.dtype)
    if y.is_contiguous():
        _expand(hidden[0], up, layout, y.view(-1, y.shape[-1]), coef)
    else:
        y.add_(_delta(hidden[0], up, layout).view(y.shape), alpha=coef)
    return hidden


def backward(
    x: torch.Tensor, grad_out: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout,
    into: torch.Tensor | None = None, coef: float = 1.0, saved: tuple[torch.Tensor, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of sum(grad_out * delta_forward(x)) for {down, up}, in their dtype.

    With `into` (shaped like x), also adds coef * (the gradient w.r.t. x) to it, in place. `saved` is what
    `inner` gave in forward, when it was kept; otherwise it is computed again.
    """
    down, up = params["down"], params["up"]
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    g2 = grad_out.reshape(-1, grad_out.shape[-1])  # [N, out]
    d, u = down.to(x2.dtype), up.to(x2.dtype)
    # Rank-as-rows orientation throughout, as in inner.
    (hidden_t,) = inner(x, params, layout) if saved is None else saved  # [k*r, N]
    if layout.is_full:
        g_hidden_t = project_tokens(u.T, g2)  # [r, N]
        g_up = reduce_tokens(hidden_t, g2).T  # [out, r]
    else:
        rank = down.shape[0] // len(layout.slices)
        g_hidden_t = g2.new_empty(down.shape[0], g2.shape[0])
        g_up = torch.empty_like(u)
        for rows, up_rows, down_rows in blocks(layout.slices, rank):
            g_rows = g2[:, rows]
            g_up[up_rows] = reduce_tokens(hidden_t[down_rows], g_rows).T
            g_hidden_t[down_rows] = project_tokens(u[up_rows].T, g_rows)
    g_down = reduce_tokens(g_hidden_t, x2)  # [k*r, in]
    if into is not None:
        if into.is_contiguous():  # accumulate inside the GEMM: no temporary, no extra pass
            into.view(-1, into.shape[-1]).addmm_(g_hidden_t.T, d, alpha=coef)
        else:
            into.add_((g_hidden_t.T @ d).reshape(x.shape), alpha=coef)
    return {"down": g_down.to(down.dtype), "up": g_up.to(up.dtype)}

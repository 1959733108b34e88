"""LoRA's fast path (vislora.functional.lora has the maths): the weight fold, and forward and backward over
row slices with the rank as rows, which BLAS runs faster on CPU than the orientation autograd picks."""

from __future__ import annotations

import torch

from ..functional import lora
from ..functional.rows import RowLayout, blocks
from .ops import project_tokens, reduce_tokens


def add_delta_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W as one fused BLAS call where the dtypes allow (a new tensor)."""
    down, up = params["down"], params["up"]
    if layout.is_full and weight.dtype == down.dtype:
        if torch.is_grad_enabled() and (up.requires_grad or down.requires_grad):
            return torch.addmm(weight, up, down, alpha=coef)  # out= tensors are not differentiable
        return torch.addmm(weight, up, down, alpha=coef, out=_padded_rows(weight))
    return weight + (lora.delta_weight(params, layout) * coef).to(weight.dtype)


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

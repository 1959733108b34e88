"""LoCon's fast path (vislora.functional.locon has the maths): the fold as one addmm, and the 1 x 1 pieces
of forward and backward as batched products over [channels, positions] views."""

from __future__ import annotations

import torch

from ..functional import locon
from ..functional.ops import Conv2dOp
from .ops import input_grad, weight_grad


def add_delta_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W as one fused BLAS call where the dtypes allow (a new tensor)."""
    down, up = params["down"], params["up"]
    if weight.dtype != down.dtype:
        return weight + (locon.delta_weight(params, layout) * coef).to(weight.dtype)
    out_channels, rank = up.shape[0], down.shape[0]
    flat = torch.addmm(weight.reshape(out_channels, -1), up.reshape(out_channels, rank), down.reshape(rank, -1),
                       alpha=coef)
    return flat.reshape(weight.shape)


def _pointwise(layout: Conv2dOp, down: torch.Tensor) -> bool:
    """A 1 x 1 conv with stride 1 and no padding: a matrix product over channels at every position."""
    return down.shape[-2:] == (1, 1) and layout.stride == (1, 1) and layout.padding in ((0, 0), "valid")


def _per_sample(w: torch.Tensor, t3: torch.Tensor) -> torch.Tensor:
    """w [a, b] @ t3[i] for every sample i of t3 [n, b, P] -> [n, a, P], as one batched product."""
    return torch.bmm(w.expand(t3.shape[0], *w.shape), t3)


def inner(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> tuple[torch.Tensor, ...]:
    """What backward needs of the forward besides x: the down conv's output, hidden [n, r, h', w']."""
    d = params["down"].to(x.dtype)
    n, rank = x.shape[0], d.shape[0]
    if _pointwise(layout, d):
        return (_per_sample(d.reshape(rank, -1), x.reshape(n, x.shape[1], -1)).reshape(n, rank, *x.shape[2:]),)
    return (layout.forward(x, d, None),)


def _up(hidden: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The 1 x 1 up conv as a batched product: [n, r, h', w'] -> [n, out, h', w']."""
    n, rank = hidden.shape[:2]
    u = params["up"].to(hidden.dtype).reshape(-1, rank)
    return _per_sample(u, hidden.reshape(n, rank, -1)).reshape(n, u.shape[0], *hidden.shape[2:])


def forward_into(y: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
                 coef: float) -> tuple[torch.Tensor, ...]:
    """y += coef * delta_forward(x), in place (inside the batched product where y is contiguous)."""
    saved = inner(x, params, layout)
    hidden = saved[0]
    if not y.is_contiguous():  # channels-last, for one
        y.add_(_up(hidden, params), alpha=coef)
        return saved
    n, rank = hidden.shape[:2]
    u = params["up"].to(x.dtype).reshape(-1, rank)
    y.view(n, u.shape[0], -1).baddbmm_(u.expand(n, *u.shape), hidden.reshape(n, rank, -1), alpha=coef)
    return saved


def up_grad(grad_out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """sum over batch and positions of grad_out[n, o, p] * hidden[n, r, p] -> [out, r, 1, 1].

    Computed as [r, P] @ [P, out] per sample (rank as rows), which BLAS runs much faster on CPU than the
    [out, P] @ [P, r] orientation einsum picks.
    """
    n, rank = hidden.shape[:2]
    per_sample = torch.bmm(hidden.reshape(n, rank, -1), grad_out.reshape(n, grad_out.shape[1], -1).transpose(1, 2))
    return per_sample.sum(0).T[..., None, None]  # [out, r, 1, 1]


def backward(
    x: torch.Tensor, grad_out: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp,
    into: torch.Tensor | None = None, coef: float = 1.0, saved: tuple[torch.Tensor, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of sum(grad_out * delta_forward(x)) for {down, up}; with `into`, adds coef * (w.r.t. x) to it.
    `saved` is what `inner` gave in forward, when it was kept; otherwise it is computed again.

    The 1 x 1 pieces run as batched matrix products over [channels, positions] views, which BLAS does
    several times faster than the thin convolution kernels (8-channel outputs) would.
    """
    down, up = params["down"], params["up"]
    d, u = down.to(x.dtype), up.to(x.dtype)
    n, rank = x.shape[0], d.shape[0]
    spatial = grad_out.shape[2:]
    g3 = grad_out.reshape(n, grad_out.shape[1], -1)  # [n, out, P]
    g_hidden = _per_sample(u.reshape(-1, rank).T, g3)  # [n, r, P]
    (hidden,) = inner(x, params, layout) if saved is None else saved  # [n, r, h', w']
    if _pointwise(layout, d):
        x3, d2 = x.reshape(n, x.shape[1], -1), d.reshape(rank, -1)  # [n, in, P], [r, in]
        g_down = torch.bmm(g_hidden, x3.transpose(1, 2)).sum(0).reshape(d.shape)
        if into is not None and into.is_contiguous():
            into.view(x3.shape).baddbmm_(d2.T.expand(n, *d2.T.shape), g_hidden, alpha=coef)
        elif into is not None:
            into.add_(_per_sample(d2.T, g_hidden).reshape(x.shape), alpha=coef)
    else:
        g_hidden4 = g_hidden.reshape(n, rank, *spatial)
        g_down = weight_grad(layout, x, d.shape, g_hidden4)
        if into is not None:
            into.add_(input_grad(layout, g_hidden4, d, x), alpha=coef)
    g_up = up_grad(grad_out, hidden)
    return {"down": g_down.to(down.dtype), "up": g_up.to(up.dtype)}

"""Run a layer with its adapters folded into the weight, with a hand-written backward.

    y = op(x, W + sum_i c_i * delta W_i, b)          c_i = strength_i * scale_i

Forward is one GEMM/conv instead of base + down + up + add. Backward is one GEMM/conv for the input
gradient plus the factors' thin gradients; autograd through W_eff would instead form the full [out, in]
weight gradient, which costs as much as the forward itself. Only the input x is saved; W_eff is not kept.
The base weight and bias must be frozen; the caller checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch


@dataclass(frozen=True)
class Term:
    """One adapter's share of a layer's output: its kind, layout, coefficient and factor names."""

    kind: ModuleType  # a vislora.functional kind module
    layout: Any
    coef: float
    names: tuple[str, ...]  # factor names, in the order their tensors are passed
    dropout: float = 0.0


def split(terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> list[dict[str, torch.Tensor]]:
    """The flat factor tuple (autograd wants tensors as positional arguments) back into per-term dicts."""
    out, i = [], 0
    for term in terms:
        out.append(dict(zip(term.names, factors[i : i + len(term.names)])))
        i += len(term.names)
    return out


def folded_weight(weight: torch.Tensor, terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """W + sum_i c_i * delta W_i, a new tensor (the base weight is never written)."""
    for term, params in zip(terms, split(terms, factors)):
        weight = term.kind.add_delta_weight(weight, params, term.layout, term.coef)
    return weight


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def factor_grads(ctx, x, grad_y, terms, factors, first: int, need_input: bool):
    """Each term's factor gradients (scaled by its coefficient) and, if asked, their input gradients summed."""
    grads: list[torch.Tensor | None] = []
    grad_x = None
    offset = first
    for term, params in zip(terms, split(terms, factors)):
        needed = ctx.needs_input_grad[offset : offset + len(term.names)]
        offset += len(term.names)
        if not any(needed) and not need_input:
            grads.extend([None] * len(term.names))
            continue
        gx, g = term.kind.backward(x, grad_y, params, term.layout, need_input)
        if need_input:
            grad_x = gx.mul_(term.coef) if grad_x is None else grad_x.add_(gx, alpha=term.coef)
        grads.extend(g[n].mul_(term.coef) if need else None for n, need in zip(term.names, needed))
    return grad_x, grads


class _FoldedForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op, terms, *factors):
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype)
            w = folded_weight(weight, terms, factors).to(dtype)
            y = op.forward(x, w, None if bias is None else bias.to(dtype))
        ctx.op, ctx.terms, ctx.dtype = op, terms, dtype
        ctx.save_for_backward(x, weight, *factors)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, *factors = ctx.saved_tensors
        factors = tuple(factors)
        op, terms = ctx.op, ctx.terms
        grad_y = grad_y.to(ctx.dtype)
        need_x = ctx.needs_input_grad[0]
        # The input gradient goes through a rebuilt W_eff (cost ~ rank * weight size) or through the base
        # weight plus each adapter's thin input gradient (cost ~ rank * tokens * fan_in). Rebuilding wins
        # once the layer sees more tokens than it has output channels.
        via_weight = need_x and op.tokens(x) >= weight.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            grad_x, grads = factor_grads(ctx, x, grad_y, terms, factors, 5, need_x and not via_weight)
            if need_x:
                w = folded_weight(weight, terms, factors) if via_weight else weight
                base = op.input_grad(grad_y, w.to(ctx.dtype), x.shape)
                grad_x = base if grad_x is None else grad_x.add_(base)
        return (grad_x, None, None, None, None, *grads)


def folded_forward(x, weight, bias, op, terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return _FoldedForward.apply(x, weight, bias, op, terms, *factors)

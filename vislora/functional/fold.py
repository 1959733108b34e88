"""Run a layer with its adapters folded into the weight, with a hand-written backward.

    y = op(x, W + sum_i c_i * delta W_i, b)          c_i = strength_i * scale_i

Forward is one GEMM/conv instead of base + down + up + add; backward is one GEMM/conv for the input
gradient plus the factors' thin gradients. Autograd through W_eff would instead form the full
[out, in] weight gradient, which costs as much as the forward itself. Nothing activation-sized is saved
beyond the input x, which the factor gradients need; W_eff is rebuilt in backward rather than kept.
The base weight and bias must be frozen; the caller checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch


@dataclass(frozen=True)
class FoldTerm:
    """One adapter's share of the folded weight."""

    kind: ModuleType  # a vislora.functional kind module
    layout: Any
    coef: float
    names: tuple[str, ...]  # factor names, in the order their tensors are passed


def folded_weight(weight: torch.Tensor, terms: tuple[FoldTerm, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """W + sum_i c_i * delta W_i, with the deltas summed in the factors' precision."""
    delta = None
    for term, params in zip(terms, _split(terms, factors)):
        d = term.kind.delta_weight(params, term.layout)
        delta = d.mul_(term.coef) if delta is None else delta.add_(d, alpha=term.coef)
    return weight + delta.to(weight.dtype)


def _split(terms: tuple[FoldTerm, ...], factors: tuple[torch.Tensor, ...]) -> list[dict[str, torch.Tensor]]:
    out, i = [], 0
    for term in terms:
        out.append(dict(zip(term.names, factors[i : i + len(term.names)])))
        i += len(term.names)
    return out


class _FoldedForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op, terms, *factors):
        device_type = x.device.type
        compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        with torch.autocast(device_type, enabled=False):
            x = x.to(compute_dtype)
            w = folded_weight(weight, terms, factors).to(compute_dtype)
            y = op.forward(x, w, None if bias is None else bias.to(compute_dtype))
        ctx.op, ctx.terms, ctx.compute_dtype = op, terms, compute_dtype
        ctx.save_for_backward(x, weight, *factors)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, *factors = ctx.saved_tensors
        op, terms = ctx.op, ctx.terms
        grad_y = grad_y.to(ctx.compute_dtype)
        grad_x = None
        with torch.autocast(x.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                w = folded_weight(weight, terms, tuple(factors)).to(ctx.compute_dtype)
                grad_x = op.input_grad(grad_y, w, x.shape)
            grads: list[torch.Tensor | None] = []
            offset = 5  # x, weight, bias, op, terms come before the factors
            for term, params in zip(terms, _split(terms, tuple(factors))):
                needed = ctx.needs_input_grad[offset : offset + len(term.names)]
                offset += len(term.names)
                if not any(needed):
                    grads.extend([None] * len(term.names))
                    continue
                g = term.kind.factor_grads(x, grad_y, params, term.layout)
                grads.extend(g[n].mul_(term.coef) if need else None for n, need in zip(term.names, needed))
        return (grad_x, None, None, None, None, *grads)


def folded_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    op: Any,
    terms: tuple[FoldTerm, ...],
    factors: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    return _FoldedForward.apply(x, weight, bias, op, terms, *factors)

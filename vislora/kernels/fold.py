"""Run a layer with its adapters folded into the weight, with a hand-written backward.

    y = op(x, W + sum_i c_i * delta W_i, b)          c_i = strength_i * scale_i

Forward is one GEMM/conv instead of base + down + up + add. Backward is one GEMM/conv for the input
gradient plus the factors' thin gradients; autograd through W_eff would instead form the full [out, in]
weight gradient, which costs as much as the forward itself. Only the input x is saved; W_eff is not kept.
The base weight and bias must be frozen; the caller checks that.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from ..functional import KINDS
from . import locon, lora, tucker
from .ops import input_grad, tokens

# The kinds with a fast path: each module has inner, forward_into and backward (see vislora.kernels).
KERNELS = {"lora": lora, "locon": locon, "tucker": tucker}


@dataclass(frozen=True)
class Term:
    """One adapter's share of a layer's output: its kind, layout, coefficient and factor names."""

    kind: str  # a key of KERNELS (and of vislora.functional.KINDS)
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


def add_delta_weight(kind: str, weight: torch.Tensor, params: dict[str, torch.Tensor], layout: object,
                     coef: float) -> torch.Tensor:
    """weight + coef * delta W, a new tensor: the kind's fused product where its kernel has one, else summed in
    the wider dtype and cast back."""
    fused = getattr(KERNELS.get(kind), "add_delta_weight", None)
    if fused is not None:
        return fused(weight, params, layout, coef)
    delta = KINDS[kind].delta_weight(params, layout).reshape(weight.shape)  # LoHa's flattened conv factors
    return weight + (delta * coef).to(weight.dtype)


def folded_weight(weight: torch.Tensor, terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """W + sum_i c_i * delta W_i, a new tensor (the base weight is never written)."""
    for term, params in zip(terms, split(terms, factors)):
        weight = add_delta_weight(term.kind, weight, params, term.layout, term.coef)
    return weight


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def factor_grads(ctx, x, grad_y, terms, factors, first: int, into: torch.Tensor | None = None, inners=None):
    """Each term's factor gradients, scaled by its coefficient (None where not needed). With `into`, each
    term's input gradient (times its coefficient) is added to it in place. `inners`: per term, what the
    kind's `inner` gave in forward (None: computed again)."""
    grads: list[torch.Tensor | None] = []
    offset = first
    for i, (term, params) in enumerate(zip(terms, split(terms, factors))):
        needed = ctx.needs_input_grad[offset : offset + len(term.names)]
        offset += len(term.names)
        if not any(needed) and into is None:
            grads.extend([None] * len(term.names))
            continue
        inner = None if inners is None else inners[i]
        g = KERNELS[term.kind].backward(x, grad_y, params, term.layout, into, term.coef, inner)
        grads.extend(g[n].mul_(term.coef) if need else None for n, need in zip(term.names, needed))
    return grads


def save(ctx, x, weight, factors, extra=(), **state) -> None:
    """What both adapter ops keep for backward: the input, the base weight, the factors, any extra tensors,
    plus settings."""
    for key, value in state.items():
        setattr(ctx, key, value)
    ctx.n_factors = len(factors)
    ctx.save_for_backward(x, weight, *factors, *extra)


def saved(ctx, grad_y):
    """(x, base weight, factors, extra tensors, grad_y in the compute dtype), as `save` left them."""
    x, weight, *rest = ctx.saved_tensors
    return x, weight, tuple(rest[: ctx.n_factors]), tuple(rest[ctx.n_factors :]), grad_y.to(ctx.dtype)


def no_autocast(x: torch.Tensor):
    """A context with autocast off on x's device, or nothing at all when it is off already."""
    device_type = x.device.type
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


class _FoldedForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op, terms, *factors):
        dtype = compute_dtype(x)
        with no_autocast(x):
            x = x.to(dtype)
            w = folded_weight(weight, terms, factors).to(dtype)
            y = op.forward(x, w, None if bias is None else bias.to(dtype))
        save(ctx, x, weight, factors, op=op, terms=terms, dtype=dtype)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, factors, _, grad_y = saved(ctx, grad_y)
        op, terms = ctx.op, ctx.terms
        grad_x = None
        with no_autocast(x):
            if ctx.needs_input_grad[0]:
                # Through a rebuilt W_eff (cost ~ rank * weight size), or through the base weight with each
                # adapter's thin input gradient added in (cost ~ rank * tokens * fan_in). Rebuilding wins
                # once the layer sees more tokens than it has output channels.
                via_weight = tokens(op, x) >= weight.shape[0]
                w = folded_weight(weight, terms, factors) if via_weight else weight
                grad_x = input_grad(op, grad_y, w.to(ctx.dtype), x)
            grads = factor_grads(ctx, x, grad_y, terms, factors, 5, None if grad_x is None or via_weight else grad_x)
        return (grad_x, None, None, None, None, *grads)


def folded_forward(x, weight, bias, op, terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return _FoldedForward.apply(x, weight, bias, op, terms, *factors)

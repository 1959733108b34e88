"""Run a layer as base(x) + sum_i c_i * delta_i(dropout_i(x)), saving x and small tensors for backward.

Used when the adapters cannot be folded into one weight (dropout: the adapter sees dropout(x), the base
sees x) or when folding costs more than it saves (few tokens). Backward gets x, each adapter's rank-sized
activations and, with dropout, the mask packed into bits (1/32 of x in fp32). The dropped copy of x is
not stored (autograd would keep it, a byte-per-element mask as well); backward forms it again from x and
the mask, which costs a pass over x, far less than drawing the random numbers again.
"""

from __future__ import annotations

import torch

from . import bitmask
from .ops import input_grad
from .fold import KERNELS, Term, compute_dtype, factor_grads, no_autocast, save, saved, split


def _keep_mask(t: torch.Tensor, p: float) -> torch.Tensor:
    """Which elements dropout keeps, drawn from torch's global generator (torch.manual_seed repeats it)."""
    return torch.rand(t.shape, device=t.device) >= p


def _dropped(t: torch.Tensor, p: float, mask: torch.Tensor | None) -> torch.Tensor:
    """t * mask / (1 - p); the identity without dropout."""
    return t if mask is None else torch.where(mask, t, 0.0).mul_(1.0 / (1.0 - p))


class _UnfoldedForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op, terms, *factors):
        dtype = compute_dtype(x)
        with no_autocast(x):
            x = x.to(dtype)
            y = op.forward(x, weight.to(dtype), None if bias is None else bias.to(dtype))
            kept, sizes = [], []  # per term: [packed mask], then the kind's rank-sized activations
            for term, params in zip(terms, split(terms, factors)):
                mask = _keep_mask(x, term.dropout) if term.dropout else None
                dropped = _dropped(x, term.dropout, mask)
                inner = KERNELS[term.kind].forward_into(y, dropped, params, term.layout, term.coef)
                kept += ([] if mask is None else [bitmask.pack(mask)]) + list(inner)
                sizes.append(len(inner))
        save(ctx, x, weight, factors, kept, op=op, terms=terms, dtype=dtype, inner_sizes=sizes)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, factors, kept, grad_y = saved(ctx, grad_y)
        need_x = ctx.needs_input_grad[0]
        grads = []
        offset = 5  # x, weight, bias, op, terms come before the factors
        kept = iter(kept)
        with no_autocast(x):
            grad_x = input_grad(ctx.op, grad_y, weight.to(ctx.dtype), x) if need_x else None
            for term, params, size in zip(ctx.terms, split(ctx.terms, factors), ctx.inner_sizes):
                mask = bitmask.unpack(next(kept), x.shape) if term.dropout else None
                inner = tuple(next(kept) for _ in range(size))
                # With dropout the input gradient passes through the mask too, so it is formed apart first.
                into = None if grad_x is None else (grad_x if mask is None else torch.zeros_like(grad_x))
                grads += factor_grads(ctx, _dropped(x, term.dropout, mask), grad_y, (term,), tuple(params.values()),
                                      offset, into, (inner,))
                offset += len(term.names)
                if into is not None and mask is not None:
                    # the chain rule through x * mask / (1 - p)
                    grad_x.add_(torch.where(mask, into, 0.0), alpha=1.0 / (1.0 - term.dropout))
        return (grad_x, None, None, None, None, *grads)


def unfolded_forward(x, weight, bias, op, terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return _UnfoldedForward.apply(x, weight, bias, op, terms, *factors)

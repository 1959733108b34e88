"""Run a layer as base(x) + sum_i c_i * delta_i(dropout_i(x)), saving only x for backward.

Used when the adapters cannot be folded into one weight (dropout: the adapter sees dropout(x), the base
sees x) or when folding costs more than it saves (few tokens). Dropout masks are not stored: each one is
drawn from a generator with a recorded seed and drawn again in backward, so the saved state per adapted
layer is the input alone (autograd would keep the dropped copy of x and the mask as well).
"""

from __future__ import annotations

import torch

from .fold import Term, compute_dtype, factor_grads, no_autocast, save, saved, split


def _keep_mask(t: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Which elements dropout keeps: a function of (seed, shape, device) only, so backward can redraw it."""
    g = torch.Generator(device=t.device).manual_seed(seed)
    return torch.rand(t.shape, generator=g, device=t.device) >= p


def _dropped(t: torch.Tensor, p: float, mask: torch.Tensor | None) -> torch.Tensor:
    """t * mask / (1 - p); the identity without dropout."""
    return t if mask is None else torch.where(mask, t, 0.0).mul_(1.0 / (1.0 - p))


class _UnfoldedForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, op, terms, seeds, *factors):
        dtype = compute_dtype(x)
        with no_autocast(x):
            x = x.to(dtype)
            y = op.forward(x, weight.to(dtype), None if bias is None else bias.to(dtype))
            inners = []
            for term, params, seed in zip(terms, split(terms, factors), seeds):
                mask = _keep_mask(x, term.dropout, seed) if term.dropout else None
                inners.append(term.kind.forward_into(y, _dropped(x, term.dropout, mask), params, term.layout, term.coef))
        # The adapters' rank-sized activations are kept (small next to x), so backward need not redo them.
        save(ctx, x, weight, factors, [t for inner in inners for t in inner], op=op, terms=terms, seeds=seeds,
             dtype=dtype, inner_sizes=[len(inner) for inner in inners])
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, factors, flat_inners, grad_y = saved(ctx, grad_y)
        need_x = ctx.needs_input_grad[0]
        grads = []
        offset = 6  # x, weight, bias, op, terms, seeds come before the factors
        inners = iter(flat_inners)
        with no_autocast(x):
            grad_x = ctx.op.input_grad(grad_y, weight.to(ctx.dtype), x) if need_x else None
            for term, params, seed, size in zip(ctx.terms, split(ctx.terms, factors), ctx.seeds, ctx.inner_sizes):
                inner = tuple(next(inners) for _ in range(size))
                mask = _keep_mask(x, term.dropout, seed) if term.dropout else None
                # With dropout the input gradient passes through the mask too, so it is formed apart first.
                into = None if grad_x is None else (grad_x if mask is None else torch.zeros_like(grad_x))
                grads += factor_grads(ctx, _dropped(x, term.dropout, mask), grad_y, (term,), tuple(params.values()),
                                      offset, into, (inner,))
                offset += len(term.names)
                if into is not None and mask is not None:
                    grad_x.add_(_dropped(into, term.dropout, mask))  # the chain rule through x * mask / (1 - p)
        return (grad_x, None, None, None, None, None, *grads)


def unfolded_forward(x, weight, bias, op, terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    # Seeds come from the global generator, so torch.manual_seed makes training reproducible.
    seeds = tuple(int(torch.randint(2**62, ())) if t.dropout else 0 for t in terms)
    return _UnfoldedForward.apply(x, weight, bias, op, terms, seeds, *factors)

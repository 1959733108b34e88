"""The fast path: adapters run with hand-written backward passes, behind one entry point, `forward`.

vislora.functional is the reference: each kind's `delta_forward`, differentiated by autograd. These kernels
compute the same layer output and gradients in less time and memory on CPU:

- fold (`fold.py`): y = op(x, W + sum_i c_i delta W_i, b) as one GEMM/conv, when the layer sees more
  tokens than folding costs; backward takes the input gradient through the folded or the base weight and
  each adapter's thin factor gradients, never the full [out, in] weight gradient.
- unfold (`unfold.py`): y = base(x) + sum_i c_i delta_i(dropout_i(x)), each adapter added inside the GEMM;
  it keeps x, the rank-sized activations and any dropout mask packed into bits (`bitmask.py`).

A kind with a fast path has a module here (KERNELS) with

    inner(x, params, layout)                      -> what backward needs of the forward besides x
    forward_into(y, x, params, layout, c)         y += c * delta_forward(x) in place; returns `inner`
    backward(x, grad_out, params, layout, into=None, coef=1.0, saved=None)
                                                  -> {factor name: gradient of <grad_out, delta_forward(x)>};
                                                     with `into`, adds coef * (its gradient w.r.t. x) to it
    add_delta_weight(weight, params, layout, c)   optional: weight + c * delta W, fused (else summed plainly)

Kinds without one (LoHa, LoKr, full) train through autograd. `tests/test_kernels.py` checks, kind by kind,
that this path equals the reference in forward and in gradients. The private torch calls the fast path
makes are all in `ops.py`.
"""

from __future__ import annotations

import torch

from ..functional.ops import Conv2dOp, LinearOp
from .fold import KERNELS, Term, folded_forward
from .ops import foldable, tokens
from .unfold import unfolded_forward


def has_kernel(kind: str) -> bool:
    """Whether the kind has a fast path here (else AdapterLayer runs it through autograd)."""
    return kind in KERNELS


def covers(op: LinearOp | Conv2dOp, base_trainable: bool) -> bool:
    """Whether the kernels can run a layer with this op: always outside grad mode; under it, for a frozen base
    whose op has an exact hand-written input gradient (Linear, convs with zero padding given as numbers)."""
    return not torch.is_grad_enabled() or (foldable(op) and not base_trainable)


def should_fold(x: torch.Tensor, weight: torch.Tensor, op: LinearOp | Conv2dOp, terms: tuple[Term, ...]) -> bool:
    """Fold when touching the weight once is cheaper than extra passes over the activations.

    Folding costs about one pass over the [out, fan_in] weight; not folding costs passes over the
    [tokens, fan_in] input and [tokens, out] output for each adapter. Dropout never folds: the adapter sees
    dropout(x) and the base sees x, which is not one weight.
    """
    if any(t.dropout for t in terms):
        return False
    fan_out = weight.shape[0]
    fan_in = weight.numel() // fan_out
    return tokens(op, x) * (fan_in + fan_out) >= weight.numel()


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, op: LinearOp | Conv2dOp,
            terms: tuple[Term, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """op(x, W, b) + sum_i c_i * delta_i(x) for the adapters `terms` (factors flat, in term order), folded or
    not (`should_fold`). Every term's kind must have a kernel and `covers(op, ...)` must hold; the base
    weight and bias get no gradient."""
    if should_fold(x, weight, op, terms):
        return folded_forward(x, weight, bias, op, terms, factors)
    return unfolded_forward(x, weight, bias, op, terms, factors)


__all__ = ["KERNELS", "Term", "covers", "forward", "has_kernel", "should_fold"]

"""Many adapters of one layer as few: stacked factors for inference, and the merged weight for fusing.

Adapters of one kind and layout stack into one adapter of rank sum(r_i) whose delta is
sum_i strength_i * scale_i * delta_i (`stack` of their kind; see vislora.functional), so a layer pays one
low-rank pass, or one pass over its weight when merging, whatever the number of adapters. A kind without
`stack` runs its adapters one Term each. `slots` are AdapterSlots (kind, layout, params, coef, dropout).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .functional import KINDS
from .kernels import Term

def terms_of(slots: list[Any], training: bool) -> tuple[tuple[Term, ...], tuple[torch.Tensor, ...]]:
    """One Term per adapter, with its own coefficient (and dropout while training), and the factors in order."""
    terms, factors = [], []
    for s in slots:
        terms.append(Term(s.kind, s.layout, s.coef, s.factor_names, s.dropout if training else 0.0))
        factors.extend(s.params.values())
    return tuple(terms), tuple(factors)


def _stacks(slots: list[Any], dtype: torch.dtype) -> list[tuple[str, Any, list[tuple[dict, float]]]]:
    """Per (kind, layout) group: [(stacked params in dtype, 1.0)], or each adapter's (params, coef) where
    the kind cannot stack."""
    groups: dict[tuple, list[Any]] = {}
    for s in slots:
        groups.setdefault((s.kind, s.layout), []).append(s)
    out = []
    with torch.no_grad():
        for (kind, layout), members in groups.items():
            stack = getattr(KINDS[kind], "stack", None)
            parts = [({n: p.to(dtype) for n, p in m.params.items()}, m.coef) for m in members]
            stacked = None if stack is None else stack([p for p, _ in parts], [c for _, c in parts], layout)
            out.append((kind, layout, parts if stacked is None else [(stacked, 1.0)]))
    return out


def stacked_terms(slots: list[Any], dtype: torch.dtype) -> tuple[tuple[Term, ...], tuple[torch.Tensor, ...]]:
    """Terms and factors for inference: one Term per stackable group (coefficient 1, no gradient)."""
    terms, factors = [], []
    for kind, layout, parts in _stacks(slots, dtype):
        functions = KINDS[kind]
        for params, coef in parts:
            terms.append(Term(kind, layout, coef, functions.FACTORS))
            factors += [params[n] for n in functions.FACTORS]
    return tuple(terms), tuple(factors)


def merged_weight(pristine: torch.Tensor, slots: list[Any], out: torch.Tensor | None = None) -> torch.Tensor | None:
    """pristine + sum over slots of strength * scale * delta W in pristine's dtype; None if not finite.

    Summed in fp32 (or wider), one stacked product per group. A finite fp32 base plus finite factors is
    finite, so only the (rank-sized) factors are checked there; the result too where the cast to fp16/bf16
    may overflow. The result is a new tensor, or `out` (shaped like pristine, never pristine itself) written
    in place: re-blending a fused layer then touches no fresh memory. `out` is only written once every check
    has passed.
    """
    dtype = torch.promote_types(pristine.dtype, torch.float32)
    total = pristine.to(dtype)
    direct = out is not None and out.dtype == dtype and out.is_contiguous()  # the first product may write it
    # DoRA and kinds without `stack` (LoHa, LoKr, full diffs) add their own weighted delta, checked in full.
    apart = [s for s in slots if getattr(s, "dora_axis", None) is not None or not hasattr(KINDS[s.kind], "stack")]
    slots = [s for s in slots if s not in apart]
    for kind, layout, parts in _stacks(slots, dtype):
        for params, coef in parts:
            if not math.isfinite(coef) or not all(torch.isfinite(t).all() for t in params.values()):
                return None
            # delta W = up @ down as matrices (the kind's MATRIX_PRODUCT, on every row): the merged weight is one
            # addmm that reads the pristine weight once
            if getattr(KINDS[kind], "MATRIX_PRODUCT", False) and getattr(layout, "is_full", True):
                up, down = params["up"], params["down"]
                rows = total.shape[0]
                target = out.view(rows, -1) if direct else None
                flat = torch.addmm(total.reshape(rows, -1), up.reshape(rows, -1), down.reshape(down.shape[0], -1),
                                   alpha=coef, out=target)
                total = flat.view(pristine.shape)
            else:
                total = total + KINDS[kind].delta_weight(params, layout) * coef
            direct = False
    for s in apart:
        total = total + s.weighted_delta(pristine).to(total)
    if apart and not torch.isfinite(total).all():
        return None
    result = total.to(pristine.dtype)
    if result is pristine:
        result = result.clone()  # nothing merged: still a new tensor
    if result.dtype != dtype and not torch.isfinite(result).all():
        return None
    if out is not None and result.data_ptr() != out.data_ptr():
        out.copy_(result)
        result = out
    return result


def bias_deltas(slots: list[Any]) -> list[torch.Tensor]:
    """strength * scale * delta b (fp32) of each slot that changes the bias (full's diff_b)."""
    return [b for b in (s.weighted_bias() for s in slots) if b is not None]


def merged_bias(pristine: torch.Tensor, slots: list[Any]) -> torch.Tensor | None:
    """pristine + sum over slots of strength * scale * delta b (full's diff_b), summed in fp32 and cast to
    pristine's dtype; `pristine` itself when no slot changes the bias; None if the result is not finite."""
    deltas = bias_deltas(slots)
    if not deltas:
        return pristine
    total = pristine.to(torch.promote_types(pristine.dtype, torch.float32))
    for delta in deltas:
        total = total + delta.to(total)
    result = total.to(pristine.dtype)
    return result if torch.isfinite(result).all() else None

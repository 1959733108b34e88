"""A module's adapter cut into consecutive blocks of output rows, and blocks stacked back into one: the exact
maths of a fused layer (one original layer that is several diffusers layers, kohya_fused) for any kind.

Each kind says which of its factors hold delta W's output rows (`output_rows` in vislora.functional: LoRA's
up, LoHa's w1_a and w2_a, LoKr's W1, whose every row makes a W2-high band, a full diff and diff_b); the other
factors are shared by every row. So a block keeps the kind, the shared factors, rank and alpha, and takes its
rows of the row factors. Where a block boundary falls inside a LoKr band, or the kind's rows are mixed (LoHa
with Tucker cores), each block is a full-weight difference instead: the delta times the scale, computed in
float32 (float64 stays float64) from the file's factors. A DoRA magnitude per output row is cut with the rows,
as the decomposition normalises each row on its own; one per input column spans every row and cannot be cut.
"""

from __future__ import annotations

import torch

from ..functional import KINDS
from .adapter import ModuleWeights


class Malformed(ValueError):
    """Factors whose shapes do not agree (a malformed file), as against an adapter that has no exact cut."""


def _rows(w: ModuleWeights) -> tuple[tuple[str, ...], int] | None:
    """(row factors present, output rows per factor row), or None where the kind's rows are mixed."""
    found = getattr(KINDS[w.kind], "output_rows", lambda f: None)(w.factors)
    return None if found is None else (tuple(n for n in found[0] if n in w.factors), found[1])


def out_rows(w: ModuleWeights) -> int | None:
    """delta W's output rows, from the factors' shapes (None where the kind does not say). ValueError where
    the row factors disagree (a malformed file)."""
    found = _rows(w)
    if found is None:
        return None
    rows = {w.factors[n].shape[0] * found[1] for n in found[0]}
    if len(rows) > 1:
        raise Malformed(f"its {', '.join(found[0])} disagree on the output rows ({sorted(rows)})")
    return rows.pop()


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat on dim 0; where one is on the meta device (a header-only read) an empty meta tensor of the
    shape, as cat there would load torch's compiler."""
    if any(t.is_meta for t in tensors):
        return torch.empty(sum(t.shape[0] for t in tensors), *tensors[0].shape[1:], dtype=tensors[0].dtype,
                           device="meta")
    return torch.cat(tensors)


def _magnitudes(w: ModuleWeights, sizes: list[int]) -> list[torch.Tensor | None]:
    if w.magnitude is None:
        return [None] * len(sizes)
    m = w.magnitude
    if m.shape[0] == 1:
        raise ValueError(f"its DoRA magnitude {tuple(m.shape)} is per input column (LyCORIS before 3.2, "
                         "wd_on_output=False): each column's norm spans every part's rows, so no part's "
                         "decomposition is its own")
    if m.shape[0] != sum(sizes) or any(d != 1 for d in m.shape[1:]):
        raise Malformed(f"its DoRA magnitude {tuple(m.shape)} does not have its {sum(sizes)} output rows")
    return list(torch.split(m, sizes))


def delta(w: ModuleWeights, rows: int) -> torch.Tensor:
    """scale * delta W (2-D), in float32 or float64; an empty meta tensor of its shape on a header-only read."""
    kind = KINDS[w.kind]
    first = next(iter(w.factors.values()))
    dtype = torch.promote_types(first.dtype, torch.float32)
    if any(t.is_meta for t in w.factors.values()):  # a header-only read: small factors have values, large not
        return torch.empty(rows, kind.in_features(w.factors), dtype=dtype, device="meta")
    factors = {n: t.to(dtype) for n, t in w.factors.items()}
    try:
        return (kind.delta_weight(factors, None) * w.scale).reshape(rows, -1)
    except RuntimeError as e:  # factors that do not multiply (a malformed file)
        raise Malformed(f"its factors do not make a [{rows}, ...] weight: {e}") from None


def cut(w: ModuleWeights, sizes: list[int]) -> list[ModuleWeights]:
    """`w` as one module per block of `sizes` output rows, in order (see the module docstring). ValueError
    where that cannot be exact (a DoRA magnitude per input column)."""
    magnitudes = _magnitudes(w, sizes)
    found = _rows(w)
    if found is not None and all(s % found[1] == 0 for s in sizes):
        names, per = found
        pieces = {n: torch.split(w.factors[n], [s // per for s in sizes]) for n in names}
        parts = [ModuleWeights(w.kind, {**w.factors, **{n: pieces[n][j] for n in names}}, w.rank, w.alpha, w.rslora)
                 for j in range(len(sizes))]
    else:
        diffs = torch.split(delta(w, sum(sizes)), sizes)
        parts = [ModuleWeights("full", {"diff": d}, 1, 1.0) for d in diffs]
    for part, m in zip(parts, magnitudes):
        part.magnitude = m
    return parts


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal tensors (on the meta device, a header-only read, the same tensor: values are unknown)."""
    return a is b or (not a.is_meta and not b.is_meta and a.shape == b.shape and torch.equal(a, b))


def stack(parts: list[ModuleWeights | None], sizes: list[int]) -> ModuleWeights:
    """One module whose delta rows are the parts' in order (None: a part with no adapter, zero rows), where
    one exists exactly: the parts share a kind, a scale and every factor but the row factors. ValueError
    naming why not."""
    present = [p for p in parts if p is not None]
    first = present[0]
    if any(p.kind != first.kind or p.slices for p in present):
        raise ValueError("its parts are of different kinds" if any(p.kind != first.kind for p in present)
                         else "its parts adapt row slices")
    found = _rows(first)
    if found is None:
        raise ValueError(f"a {first.kind} adapter's rows are mixed by its cores")
    names, per = found
    if any(s % per for s in sizes):
        raise ValueError(f"its {first.kind} blocks of {per} rows straddle its parts")
    if any((p.rank, p.alpha, p.rslora) != (first.rank, first.alpha, first.rslora) for p in present):
        raise ValueError("its parts have different scales")
    shared = [n for n in first.factors if n not in names]
    if any(p.factors.keys() != first.factors.keys() or not all(_same(p.factors[n], first.factors[n])
                                                                for n in shared) for p in present):
        raise ValueError(f"its {first.kind} parts do not share their {', '.join(shared) or 'factors'}")
    factors = dict(first.factors)
    for n in names:
        t = first.factors[n]
        factors[n] = _cat([p.factors[n] if p is not None else t.new_zeros(s // per, *t.shape[1:])
                           for p, s in zip(parts, sizes)])
    out = ModuleWeights(first.kind, factors, first.rank, first.alpha, first.rslora)
    out.magnitude = stacked_magnitude(parts)
    return out


def stacked_magnitude(parts: list[ModuleWeights | None]) -> torch.Tensor | None:
    """The parts' DoRA magnitudes (per output row) as one, or None where none has one. ValueError where some
    part has none (its weight's norms are the base model's, which a file cannot carry) or one per column."""
    if all(p is None or p.magnitude is None for p in parts):
        return None
    if any(p is None or p.magnitude is None for p in parts):
        raise ValueError("DoRA on some of its parts only (a part without one would need the base weight's norms)")
    if any(p.magnitude.shape[0] == 1 for p in parts):
        raise ValueError("its DoRA magnitudes are per input column, which span every part's rows")
    return _cat([p.magnitude for p in parts])

"""Row slices of a fused Linear (timm's qkv): which output rows a LoRA covers, and its plain-LoRA form.

A LoRA on slices (q, v) of a fused projection has down [k*r, in] (one r-row block per slice) and
up [rows, r] (the slices' rows stacked). Its plain-LoRA equivalent, of rank k*r, has the same down and a
block-diagonal B [out, k*r] with zeros elsewhere; any PEFT-layout reader applies that one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

Slices = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RowLayout:
    """Which output rows of a Linear the adapter covers: `slices` of [0, out_features)."""

    out_features: int
    slices: Slices

    @classmethod
    def full(cls, out_features: int) -> "RowLayout":
        return cls(out_features, ((0, out_features),))

    @property
    def is_full(self) -> bool:
        return self.slices == ((0, self.out_features),)

    @property
    def rows(self) -> int:
        return sum(stop - start for start, stop in self.slices)


def blocks(slices: Slices, rank: int) -> Iterator[tuple[slice, slice, slice]]:
    """Per slice: (rows of the output, rows of up, rows of down)."""
    offset = 0
    for i, (start, stop) in enumerate(slices):
        n = stop - start
        yield slice(start, stop), slice(offset, offset + n), slice(i * rank, (i + 1) * rank)
        offset += n


def fused_up(up: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """Slice-wise up [rows, r] -> block-diagonal B [out, k*r] of the equivalent plain LoRA."""
    rank = up.shape[1]
    fused = up.new_zeros(layout.out_features, len(layout.slices) * rank)
    for rows, up_rows, down_rows in blocks(layout.slices, rank):
        fused[rows, down_rows] = up[up_rows]
    return fused


def sliced_up(fused: torch.Tensor, slices: Slices) -> tuple[torch.Tensor, bool]:
    """Inverse of fused_up: (up [rows, r], whether B had non-zero entries outside the slice blocks)."""
    rank = fused.shape[1] // len(slices)
    parts, mask = [], torch.ones_like(fused, dtype=torch.bool)
    for rows, _, down_rows in blocks(slices, rank):
        parts.append(fused[rows, down_rows])
        mask[rows, down_rows] = False
    return torch.cat(parts), bool(fused[mask].any())

"""LoRA for Linear layers: delta W = up @ down, optionally on row slices of a fused projection.

Shapes (r = rank, k = number of slices):
    down [k*r, in]       one r-row block per slice
    up   [rows, r]       the slices' output rows stacked: slice i owns up[o_i : o_i + len_i]
A slice (start, stop) adapts only output rows start:stop, e.g. the q and v thirds of timm's fused qkv.
With one slice covering every row this is plain LoRA: delta W = up @ down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import kaiming, last
from .rows import RowLayout, blocks, fused_up

FACTORS = ("down", "up")
BASES = (nn.Linear,)
ROW_SLICES = True  # adapts q/v slices of a fused qkv (see rows.py)


def shapes(weight_shape: tuple[int, ...], rank: int, layout: RowLayout) -> dict[str, tuple[int, ...]]:
    """down [k*r, in] (one r-row block per slice), up [rows, r] (the slices' output rows stacked)."""
    return {"down": (len(layout.slices) * rank, weight_shape[1]), "up": (layout.rows, rank)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: RowLayout) -> dict[str, torch.Tensor]:
    """down: Kaiming-uniform (as nn.Linear); up: zeros, so a fresh adapter is an exact no-op.

    init="random" also fills up, giving an adapter that changes the output (for tests and checks).
    """
    want = shapes(weight_shape, rank, layout)
    return {"down": kaiming(want["down"]), "up": last(want["up"], rank, init)}


def delta_weight(params: dict[str, torch.Tensor], layout: RowLayout) -> torch.Tensor:
    """delta W [out, in]; rows outside the slices are zero."""
    down, up = params["down"], params["up"]
    if layout.is_full:
        return up @ down
    rank = down.shape[0] // len(layout.slices)
    delta = down.new_zeros(layout.out_features, down.shape[1])
    for rows, up_rows, down_rows in blocks(layout.slices, rank):
        delta[rows] = up[up_rows] @ down[down_rows]
    return delta


def stack(params_list: list[dict[str, torch.Tensor]], coefs: list[float], layout: RowLayout) -> dict[str, torch.Tensor]:
    """One LoRA of rank sum(r_i) whose delta is sum_i coef_i * delta_i: downs concatenated along the rank
    (slice by slice), ups along the rank with each coef folded in."""
    k = len(layout.slices)
    downs = [p["down"].reshape(k, -1, p["down"].shape[-1]) for p in params_list]  # [k, r_i, in]
    down = torch.cat(downs, 1).reshape(-1, downs[0].shape[-1])
    up = torch.cat([p["up"] * c for p, c in zip(params_list, coefs)], 1)  # [rows, R]
    return {"down": down, "up": up}


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: RowLayout) -> torch.Tensor:
    """delta W applied to x without forming delta W: [..., in] -> [..., k*r] -> [..., out] (on row slices,
    up as the block-diagonal B of the equivalent plain LoRA)."""
    down, up = params["down"].to(x.dtype), params["up"].to(x.dtype)
    return F.linear(F.linear(x, down), up if layout.is_full else fused_up(up, layout))

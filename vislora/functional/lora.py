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
    """delta W [out, in]; rows outside the slices are zero (layout None: every row)."""
    down, up = params["down"], params["up"]
    if layout is None or layout.is_full:
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


# -- file-facing facts (vislora.formats, blend and tools read these) ----------------------------------------
LYCORIS_PARTS = {"down": "lora_down.weight", "up": "lora_up.weight"}  # factor -> kohya/LyCORIS key part
ALGO = "lora"  # LyCORIS's name for it (ss_network_args "algo")
NETWORK = "networks.lora"  # the kohya network module that writes it (ss_network_module)
MATRIX_PRODUCT = True  # delta W = up @ down as matrices: adapters stack exactly by concatenating along the rank


def accepts(factors: dict[str, torch.Tensor]) -> bool:
    """Whether a file's lora_down / lora_up are this kind: a 2-D down (LoCon's is 4-D)."""
    return factors["down"].dim() == 2


def file_rank(params: dict[str, torch.Tensor]) -> int:
    """The rank a file's alpha is divided by, from shapes."""
    return params["down"].shape[0]


def in_features(params: dict[str, torch.Tensor]) -> int:
    """The base weight's input width the factors were made for."""
    return params["down"].shape[1]


def output_rows(params: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], int]:
    """up's rows are delta W's rows (one each); down is shared by every row."""
    return ("up",), 1


def fit(factors: dict[str, torch.Tensor], weight_shape: tuple[int, ...]) -> tuple[str, dict[str, torch.Tensor]]:
    """(kind, factors) for a base weight of this shape: on a 1 x 1 conv, LoCon with the factors unsqueezed."""
    if len(weight_shape) == 4 and tuple(weight_shape[2:]) == (1, 1):
        return "locon", {n: t[..., None, None] for n, t in factors.items()}
    return "lora", factors

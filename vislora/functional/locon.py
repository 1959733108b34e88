"""LoCon for Conv2d: a k x k conv down to `rank` channels, then a 1 x 1 conv back up.

Shapes (r = rank):
    down [r, in, kh, kw]   the base layer's kernel, stride, padding and dilation
    up   [out, r, 1, 1]
    delta W = (up.reshape(out, r) @ down.reshape(r, in*kh*kw)).reshape(out, in, kh, kw)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import kaiming, last
from .lora import LYCORIS_PARTS, file_rank, in_features  # noqa: F401  (file-facing facts, shared)
from .ops import Conv2dOp

FACTORS = ("down", "up")
BASES = (nn.Conv2d,)


def shapes(weight_shape: tuple[int, ...], rank: int, layout: Conv2dOp) -> dict[str, tuple[int, ...]]:
    """down [r, in, kh, kw] (the base kernel), up [out, r, 1, 1]."""
    out_channels, in_channels, kh, kw = weight_shape
    return {"down": (rank, in_channels, kh, kw), "up": (out_channels, rank, 1, 1)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: Conv2dOp) -> dict[str, torch.Tensor]:
    """down: Kaiming-uniform (as nn.Conv2d); up: zeros (exact no-op), or random with init="random"."""
    want = shapes(weight_shape, rank, layout)
    return {"down": kaiming(want["down"]), "up": last(want["up"], rank, init)}


def delta_weight(params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    down, up = params["down"], params["up"]
    rank, in_channels, kh, kw = down.shape
    out_channels = up.shape[0]
    flat = up.reshape(out_channels, rank) @ down.reshape(rank, -1)  # [out, in*kh*kw]
    return flat.reshape(out_channels, in_channels, kh, kw)


def stack(params_list: list[dict[str, torch.Tensor]], coefs: list[float], layout: Conv2dOp) -> dict[str, torch.Tensor]:
    """One LoCon of rank sum(r_i) whose delta is sum_i coef_i * delta_i: downs concatenated along the rank
    (output channels of the k x k conv), ups along the rank with each coef folded in."""
    return {"down": torch.cat([p["down"] for p in params_list], 0),
            "up": torch.cat([p["up"] * c for p, c in zip(params_list, coefs)], 1)}


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    """The k x k down conv (the base geometry), then the 1 x 1 up conv: [n, in, h, w] -> [n, out, h', w']."""
    return F.conv2d(layout.forward(x, params["down"].to(x.dtype), None), params["up"].to(x.dtype))


# -- file-facing facts (vislora.formats, blend and tools read these) ----------------------------------------
# LoRA's key parts; rank and input width read from down as LoRA reads them (imported from lora above)
ALGO = "locon"
NETWORK = "networks.lora"
MATRIX_PRODUCT = True  # up [out, r, 1, 1] @ down [r, in*kh*kw], flattened: stacks by concatenation


def accepts(factors: dict[str, torch.Tensor]) -> bool:
    """Whether a file's lora_down / lora_up are this kind: a 4-D down."""
    return factors["down"].dim() == 4


def fit(factors: dict[str, torch.Tensor], weight_shape: tuple[int, ...]) -> tuple[str, dict[str, torch.Tensor]]:
    """(kind, factors) for a base weight of this shape: 1 x 1 factors on a Linear (SD1 files on SD2-style
    linear proj_in) are LoRA, squeezed."""
    if len(weight_shape) == 2 and tuple(factors["down"].shape[2:]) == (1, 1):
        return "lora", {n: t.flatten(1) for n, t in factors.items()}
    return "locon", factors

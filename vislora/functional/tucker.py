"""LoCon with a Tucker core: 1 x 1 down to `rank`, a k x k rank -> rank core, 1 x 1 up.

Shapes (r = rank):
    down [r, in, 1, 1]
    mid  [r, r, kh, kw]   the base layer's kernel, stride, padding and dilation
    up   [out, r, 1, 1]
    delta W[o, i, h, w] = sum_ab up[o, a] * mid[a, b, h, w] * down[b, i]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import kaiming, last
from .lora import file_rank, in_features  # noqa: F401  (read from down, as LoRA's)
from .ops import Conv2dOp

FACTORS = ("down", "mid", "up")
BASES = (nn.Conv2d,)


def fits(weight_shape: tuple[int, ...]) -> bool:
    """A 1 x 1 kernel leaves the core nothing to do: such convs take LoCon instead."""
    return tuple(weight_shape[2:]) != (1, 1)


def shapes(weight_shape: tuple[int, ...], rank: int, layout: Conv2dOp) -> dict[str, tuple[int, ...]]:
    """down [r, in, 1, 1], mid [r, r, kh, kw] (the base kernel), up [out, r, 1, 1]."""
    out_channels, in_channels, kh, kw = weight_shape
    return {"down": (rank, in_channels, 1, 1), "mid": (rank, rank, kh, kw), "up": (out_channels, rank, 1, 1)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: Conv2dOp) -> dict[str, torch.Tensor]:
    want = shapes(weight_shape, rank, layout)
    down = kaiming(want["down"])
    return {"down": down, "mid": kaiming(want["mid"]), "up": last(want["up"], rank, init)}


def delta_weight(params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    down, mid, up = params["down"], params["mid"], params["up"]
    return torch.einsum("oa,abhw,bi->oihw", up[:, :, 0, 0], mid, down[:, :, 0, 0])


def stack(params_list: list[dict[str, torch.Tensor]], coefs: list[float], layout: Conv2dOp) -> dict[str, torch.Tensor]:
    """One Tucker LoCon of rank sum(r_i) whose delta is sum_i coef_i * delta_i: downs and ups concatenated
    along the rank (coefs folded into up), the cores placed on the diagonal of one [R, R, kh, kw] core."""
    mids = [p["mid"] for p in params_list]
    total = sum(m.shape[0] for m in mids)
    mid = mids[0].new_zeros(total, total, *mids[0].shape[2:])
    at = 0
    for m in mids:
        mid[at : at + m.shape[0], at : at + m.shape[0]] = m
        at += m.shape[0]
    return {"down": torch.cat([p["down"] for p in params_list], 0), "mid": mid,
            "up": torch.cat([p["up"] * c for p, c in zip(params_list, coefs)], 1)}


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: Conv2dOp) -> torch.Tensor:
    """1 x 1 down, the k x k core (the base geometry), 1 x 1 up: [n, in, h, w] -> [n, out, h', w']."""
    reduced = F.conv2d(x, params["down"].to(x.dtype))
    return F.conv2d(layout.forward(reduced, params["mid"].to(x.dtype), None), params["up"].to(x.dtype))


# -- file-facing facts (vislora.formats, blend and tools read these) ----------------------------------------
LYCORIS_PARTS = {"down": "lora_down.weight", "mid": "lora_mid.weight", "up": "lora_up.weight"}
ALGO = "locon"
NETWORK = "lycoris.kohya"
NETWORK_ARGS = {"use_tucker": "True"}  # what LyCORIS's network needs to build this kind

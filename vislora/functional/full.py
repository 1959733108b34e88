"""Full-weight difference (LyCORIS `diff`, `diff_b`): delta W is stored whole, optionally a bias delta.

Shapes: diff like the base weight; diff_b [out] (optional). There is no rank: files carry no alpha and
the scale is 1 (readers set rank = alpha = 1).
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import apply_delta

FACTORS = ("diff", "diff_b")
BASES = (nn.Linear, nn.Conv2d)


def shapes(weight_shape: torch.Size, rank: int, layout: object) -> dict[str, tuple[int, ...]]:
    """diff: the weight's shape (rank ignored); a bias delta diff_b [out] is optional and not initialised."""
    return {"diff": tuple(weight_shape)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: object) -> dict[str, torch.Tensor]:
    """zeros (no-op), or N(0, 0.02) with init="random"."""
    diff = torch.zeros(weight_shape)
    if init == "random":
        nn.init.normal_(diff, std=0.02)
    return {"diff": diff}


def complete(names: set[str]) -> bool:
    return "diff" in names


def check(weight_shape: tuple[int, ...], params: dict[str, torch.Tensor]) -> list[str]:
    problems = [] if tuple(params["diff"].shape) == tuple(weight_shape) else [
        f"diff: the weight is {tuple(weight_shape)}, the file has {tuple(params['diff'].shape)}"]
    if "diff_b" in params and tuple(params["diff_b"].shape) != (weight_shape[0],):
        problems.append(f"diff_b: the bias is ({weight_shape[0]},), the file has {tuple(params['diff_b'].shape)}")
    return problems


def file_rank(params: dict[str, torch.Tensor]) -> int | None:
    return None


def delta_weight(params: dict[str, torch.Tensor], layout: object) -> torch.Tensor:
    return params["diff"]


def delta_bias(params: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The bias delta [out], if the adapter has one."""
    return params.get("diff_b")


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: object) -> torch.Tensor:
    """diff applied to x, plus diff_b on the output channels where present."""
    y = apply_delta(x, params["diff"], layout)
    bias = params.get("diff_b")
    if bias is None:
        return y
    channel_axis_shape = (-1, 1, 1) if y.dim() == 4 else (-1,)  # conv outputs [n, out, h, w]; Linear [..., out]
    return y + bias.to(y.dtype).reshape(channel_axis_shape)


# -- file-facing facts (vislora.formats, blend and tools read these) ----------------------------------------
LYCORIS_PARTS = {"diff": "diff", "diff_b": "diff_b"}
ALGO = "full"
NETWORK = "lycoris.kohya"
FILE_ALPHA = False  # files carry no alpha: the scale is 1


def in_features(params: dict[str, torch.Tensor]) -> int:
    return params["diff"].shape[1]


def output_rows(params: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], int]:
    """diff's rows and diff_b's entries are the output rows."""
    return ("diff", "diff_b"), 1

"""LoHa (LyCORIS): delta W = (w1_a @ w1_b) * (w2_a @ w2_b), a Hadamard product of two low-rank matrices.

Shapes (r = rank):
    w1_a, w2_a [out, r]     w1_b, w2_b [r, in] (Linear) or [r, in, kh, kw] (Conv2d; LyCORIS files store it
                            flattened to [r, in * kh * kw], the same numbers)
Tucker variant (k x k convs; chosen by the presence of t1/t2):
    t1, t2 [r, r, kh, kw]   w1_a, w2_a [r, out]  (transposed vs non-Tucker)   w1_b, w2_b [r, in_channels]
    W1[p, q, h, w] = sum_ij t1[i, j, h, w] * w1_b[j, q] * w1_a[i, p]    (W2 likewise)
The rank that divides alpha is w1_b.shape[0]. Factors absent from `params` select the variant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops import apply_delta

FACTORS = ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")
BASES = (nn.Linear, nn.Conv2d)


def shapes(weight_shape: torch.Size, rank: int, layout: object, tucker: bool = False) -> dict[str, tuple[int, ...]]:
    """Factor shapes for a base weight; `tucker` (k x k convs only) selects the Tucker variant."""
    out = weight_shape[0]
    if tucker:
        if len(weight_shape) != 4:
            raise ValueError("Tucker LoHa needs a conv weight")
        core = (rank, rank, *weight_shape[2:])
        side = {"w1_a": (rank, out), "w1_b": (rank, weight_shape[1])}
        return {**side, "w2_a": side["w1_a"], "w2_b": side["w1_b"], "t1": core, "t2": core}
    b = (rank, *weight_shape[1:])
    return {"w1_a": (out, rank), "w1_b": b, "w2_a": (out, rank), "w2_b": b}


def complete(names: set[str]) -> bool:
    """The plain four factors, with both Tucker cores or neither."""
    return {"w1_a", "w1_b", "w2_a", "w2_b"} <= names and ("t1" in names) == ("t2" in names)


def check(weight_shape: tuple[int, ...], params: dict[str, torch.Tensor]) -> list[str]:
    """Why these factors cannot adapt a base weight of this shape (empty when they can)."""
    tucker = "t1" in params
    if tucker and len(weight_shape) != 4:
        return ["Tucker LoHa cores need a conv weight"]
    want = shapes(weight_shape, params["w1_b"].shape[0], None, tucker=tucker)
    return [f"{n}: the weight needs {s}, the file has {tuple(params[n].shape)}"
            for n, s in want.items() if tuple(params[n].shape) != s]


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: object) -> dict[str, torch.Tensor]:
    """LyCORIS's init: w1_b, w2_b ~ N(0, 1), w2_a ~ N(0, 0.1), w1_a = 0 (an exact no-op); init="random"
    also fills w1_a. Convs get the plain (flattened) variant."""
    s = shapes(weight_shape, rank, layout)
    p = {n: torch.empty(v) for n, v in s.items()}
    nn.init.normal_(p["w1_b"], std=1.0)
    nn.init.normal_(p["w2_b"], std=1.0)
    nn.init.normal_(p["w2_a"], std=0.1)
    if init == "random":
        nn.init.normal_(p["w1_a"], std=1.0 / math.sqrt(rank))
    else:
        nn.init.zeros_(p["w1_a"])
    return p


def _rebuild(t: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Tucker half: [r, r, kh, kw], [r, in], [r, out] -> [out, in, kh, kw]."""
    return torch.einsum("ijhw,jq,ip->pqhw", t, b, a)


def delta_weight(params: dict[str, torch.Tensor], layout: object) -> torch.Tensor:
    """delta W shaped like the base weight."""
    if "t1" in params:
        return _rebuild(params["t1"], params["w1_b"], params["w1_a"]) * _rebuild(
            params["t2"], params["w2_b"], params["w2_a"])
    w1_b, w2_b = params["w1_b"], params["w2_b"]
    flat = (params["w1_a"] @ w1_b.flatten(1)) * (params["w2_a"] @ w2_b.flatten(1))  # [out, in*kh*kw]
    return flat.reshape(flat.shape[0], *w1_b.shape[1:])


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: object) -> torch.Tensor:
    return apply_delta(x, delta_weight(params, layout), layout)


# -- file-facing facts (vislora.formats, blend and tools read these) ----------------------------------------
LYCORIS_PARTS = {f: f"hada_{f}" for f in FACTORS}
ALGO = "loha"
NETWORK = "lycoris.kohya"


def flat_in_files(params: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The factors LyCORIS stores flattened for a conv, [r, in * kh * kw]: w1_b and w2_b (none with cores)."""
    return () if "t1" in params else ("w1_b", "w2_b")


def file_rank(params: dict[str, torch.Tensor]) -> int:
    return params["w1_b"].shape[0]


def in_features(params: dict[str, torch.Tensor]) -> int:
    """The input width (a conv's is flattened with its kernel in files; cross-attention is Linear)."""
    return params["w1_b"].shape[1]


def output_rows(params: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], int] | None:
    """w1_a's and w2_a's rows are delta W's rows (one each: the Hadamard product is row by row); the `_b`
    factors are shared. None with Tucker cores, whose w1_a / w2_a are transposed into the core."""
    return None if "t1" in params else (("w1_a", "w2_a"), 1)

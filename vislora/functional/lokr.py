"""LoKr (LyCORIS): delta W = kron(W1, W2), reshaped to the base weight's shape.

out = a * c and in = b * d (for convs `in` is channels; the kernel goes to W2). Each side is stored whole
or as a low-rank product; the factors present select the variant:
    W1 = w1 [a, b]                            or  w1_a [a, r] @ w1_b [r, b]
    W2 = w2 [c, d] / [c, d, kh, kw]           or  w2_a [c, r] @ w2_b [r, d] / [r, d, kh, kw]
                                              or  Tucker: t2 [r, r, kh, kw], w2_a [r, c], w2_b [r, d]
                                                  W2[p, q, h, w] = sum_ij t2[i, j, h, w] w2_b[j, q] w2_a[i, p]
LyCORIS files store a conv's low-rank w2_b flattened to [r, d * kh * kw] (the same numbers).
Scale quirk (LyCORIS, ComfyUI, A1111): the rank dividing alpha is w2_b's rows if W2 is low-rank, else
w1_b's rows; with both sides whole there is no rank and the scale is 1 whatever alpha says (`file_rank`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops import apply_delta

FACTORS = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")
BASES = (nn.Linear, nn.Conv2d)


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS's split of dim into (small, large): `factor` if it divides dim, else the divisor pair
    closest to sqrt(dim). 320 -> (16, 20), 768 -> (24, 32); factor=8: 320 -> (8, 40)."""
    if factor > 0 and dim % factor == 0:
        return tuple(sorted((factor, dim // factor)))
    small = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
    return small, dim // small


def shapes(weight_shape: torch.Size, rank: int, layout: object, factor: int = -1) -> dict[str, tuple[int, ...]]:
    """LyCORIS's default variant: W1 whole; W2 low-rank, or whole when rank >= max(c, d) / 2."""
    (a, c), (b, d) = factorization(weight_shape[0], factor), factorization(weight_shape[1], factor)
    kernel = tuple(weight_shape[2:])
    if rank >= max(c, d) / 2:
        return {"w1": (a, b), "w2": (c, d, *kernel)}
    return {"w1": (a, b), "w2_a": (c, rank), "w2_b": (rank, d, *kernel)}


def init_params(weight_shape: torch.Size, rank: int, init: str, layout: object) -> dict[str, torch.Tensor]:
    """w1, w2_a: Kaiming-uniform; w2_b (or a whole w2): zeros, an exact no-op; init="random" fills it."""
    p = {n: torch.empty(s) for n, s in shapes(weight_shape, rank, layout).items()}
    last = "w2" if "w2" in p else "w2_b"
    for name, t in p.items():
        if name != last:
            nn.init.kaiming_uniform_(t, a=math.sqrt(5))
        elif init == "random":
            nn.init.normal_(t, std=1.0 / math.sqrt(t.shape[0]))
        else:
            nn.init.zeros_(t)
    return p


def complete(names: set[str]) -> bool:
    """W1 whole or as w1_a/w1_b; W2 whole, or w2_a/w2_b with an optional Tucker core t2; nothing else."""
    w1 = ("w1" in names) != ({"w1_a", "w1_b"} <= names)
    w2 = ("w2" in names) != ({"w2_a", "w2_b"} <= names) and not ("t2" in names and "w2" in names)
    return w1 and w2


def file_rank(params: dict[str, torch.Tensor]) -> int | None:
    """The rank alpha is divided by, or None (both sides whole: scale 1)."""
    if "w2_b" in params:
        return params["w2_b"].shape[0]
    if "w1_b" in params:
        return params["w1_b"].shape[0]
    return None


def _w1(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return params["w1"] if "w1" in params else params["w1_a"] @ params["w1_b"]


def _w2(params: dict[str, torch.Tensor]) -> torch.Tensor:
    if "w2" in params:
        return params["w2"]
    a, b = params["w2_a"], params["w2_b"]
    if "t2" in params:
        return torch.einsum("ijhw,jq,ip->pqhw", params["t2"], b, a)
    return (a @ b.flatten(1)).reshape(a.shape[0], *b.shape[1:])


def delta_weight(params: dict[str, torch.Tensor], layout: object) -> torch.Tensor:
    """kron(W1, W2): [a*c, b*d] (Linear) or [a*c, b*d, kh, kw] (Conv2d, W1 as [a, b, 1, 1])."""
    w1, w2 = _w1(params), _w2(params)
    return torch.kron(w1.reshape(*w1.shape, *[1] * (w2.dim() - 2)), w2.contiguous())  # kron views its inputs


def _side_shapes(p: dict[str, tuple[int, ...]]) -> tuple[tuple[int, ...], tuple[int, ...]] | str:
    """(W1 shape, W2 shape) from factor shapes, or why the factors do not pair up."""
    if "w1" in p:
        w1 = p["w1"]
    elif p["w1_a"][1] != p["w1_b"][0]:
        return f"w1_a {p['w1_a']} and w1_b {p['w1_b']} disagree on the rank"
    else:
        w1 = (p["w1_a"][0], p["w1_b"][1])
    if "w2" in p:
        return w1, p["w2"]
    a, b = p["w2_a"], p["w2_b"]
    if "t2" in p:
        t = p["t2"]
        if not (t[0] == a[0] and t[1] == b[0]):
            return f"t2 {t} does not join w2_a {a} and w2_b {b}"
        return w1, (a[1], b[1], *t[2:])
    if a[1] != b[0]:
        return f"w2_a {a} and w2_b {b} disagree on the rank"
    return w1, (a[0], *b[1:])


def check(weight_shape: tuple[int, ...], params: dict[str, torch.Tensor]) -> list[str]:
    """Why these factors cannot adapt a base weight of this shape (empty when they can)."""
    sides = _side_shapes({k: tuple(v.shape) for k, v in params.items()})
    if isinstance(sides, str):
        return [sides]
    w1, w2 = sides
    if len(w1) != 2 or len(w2) != len(weight_shape):
        return [f"W1 {w1} and W2 {w2} do not make a {len(weight_shape)}-D weight"]
    got = (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
    if got != tuple(weight_shape):
        return [f"kron(W1 {w1}, W2 {w2}) is {got}, the weight {tuple(weight_shape)}"]
    return []


def delta_forward(x: torch.Tensor, params: dict[str, torch.Tensor], layout: object) -> torch.Tensor:
    return apply_delta(x, delta_weight(params, layout), layout)


# -- file-facing facts (vislora.formats, blend and tools read these) ----------------------------------------
LYCORIS_PARTS = {f: f"lokr_{f}" for f in FACTORS}
ALGO = "lokr"
NETWORK = "lycoris.kohya"


def flat_in_files(params: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The factors LyCORIS stores flattened for a conv: a low-rank w2_b, [r, d * kh * kw] (not with t2)."""
    return () if "t2" in params else ("w2_b",)


def in_features(params: dict[str, torch.Tensor]) -> int:
    """b * d: W1's columns times W2's."""
    b = params["w1"].shape[1] if "w1" in params else params["w1_b"].shape[1]
    d = params["w2"].shape[1] if "w2" in params else params["w2_b"].shape[1]
    return b * d


def output_rows(params: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], int]:
    """W1's rows (w1, or w1_a of a low-rank W1), each of which makes W2's row count of delta W's rows (kron);
    W2 (and w1_b) are shared."""
    if "w2" in params:
        c = params["w2"].shape[0]
    else:
        c = params["w2_a"].shape[1 if "t2" in params else 0]  # Tucker's w2_a is [r, c]
    return ("w1",) if "w1" in params else ("w1_a",), c


def carry_scale(params: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Both sides whole: readers take scale 1 whatever alpha says, so a scale other than 1 goes into W1."""
    return {**params, "w1": params["w1"] * scale}

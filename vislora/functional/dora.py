"""DoRA weight decomposition: any kind's delta W rescaled to a stored magnitude, on either axis.

    W_c  = W + scale * delta W                     (fp32)
    n    = the norm of W_c per output row ("out": over in, kh, kw) or per input column ("in": over out, kh, kw)
    W'   = W_c * magnitude / (n + eps)             eps = fp32 machine epsilon, as LyCORIS adds it
    with strength m:  W + m * (W' - W)              (ComfyUI's blend: m = 0 is the base, m = 1 is W')

`magnitude` is kept in LyCORIS's shape: "out" [out, 1] / [out, 1, 1, 1] (LyCORIS >= 3.2, PEFT's
lora_magnitude_vector reshaped), "in" [1, in] / [1, in, 1, 1] (older LyCORIS, A1111). The result depends on
W, so a DoRA adapter is applied as a whole weight, never as a sum of deltas.
"""

from __future__ import annotations

import torch

AXES = ("out", "in")
EPS = torch.finfo(torch.float32).eps


def magnitude_shape(weight_shape: tuple[int, ...], axis: str) -> tuple[int, ...]:
    ones = [1] * (len(weight_shape) - 1)
    return (weight_shape[0], *ones) if axis == "out" else (1, weight_shape[1], *ones[1:])


def axis_of(magnitude_shape_: tuple[int, ...], weight_shape: tuple[int, ...]) -> str | None:
    """The axis a stored magnitude's shape means for this weight (ComfyUI's rule: out if its first dimension is
    out), or None if it fits neither. Square 1 x 1 cases (out == 1) read as "out"."""
    for axis in AXES:
        if tuple(magnitude_shape_) == magnitude_shape(weight_shape, axis):
            return axis
    return None


def norm(weight: torch.Tensor, axis: str) -> torch.Tensor:
    """Per-row ("out") or per-column ("in") 2-norm, shaped like the magnitude."""
    dims = tuple(d for d in range(weight.dim()) if d != (0 if axis == "out" else 1))
    return torch.linalg.vector_norm(weight, dim=dims, keepdim=True)


def init_magnitude(weight: torch.Tensor, axis: str) -> torch.Tensor:
    """The base weight's own norms: with a zero delta the decomposition is then the identity (up to eps)."""
    return norm(weight.float(), axis)


def decomposed_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: str,
                      strength: float = 1.0) -> torch.Tensor:
    """W + m * (W' - W) in fp32 (see the module docstring); `delta` is scale * delta W."""
    w = weight.float()
    combined = w + delta.float()
    rescaled = combined * (magnitude.float() / (norm(combined, axis) + EPS))
    return rescaled if strength == 1.0 else w + strength * (rescaled - w)

"""DoRA weight decomposition: any kind's delta W rescaled to a stored magnitude, on either axis.

    W_c  = W + scale * delta W                     (fp32)
    n    = the norm of W_c per output row ("out": over in, kh, kw) or per input column ("in": over out, kh, kw)
    W'   = W_c * magnitude / (n + eps)             eps = fp32 machine epsilon, as LyCORIS adds it
    with strength m:  W + m * (W' - W)              (ComfyUI's blend: m = 0 is the base, m = 1 is W')

`magnitude` is kept in LyCORIS's shape: "out" [out, 1] / [out, 1, 1, 1] (LyCORIS >= 3.2, PEFT's
lora_magnitude_vector reshaped), "in" [1, in] / [1, in, 1, 1] (older LyCORIS, A1111). The result depends on
W, so a DoRA adapter is merged as a whole weight, never stacked with other adapters' deltas.

Training treats the norm n as a constant (detached), as the DoRA paper suggests (section 4.3) and PEFT does:
gradients reach delta W only through the numerator, W_c * magnitude / n, and the magnitude through 1 / n.
The forward value is unchanged; the backward needs no weight-sized graph for the norm. On axis "out" the
output is then formed without W' (PEFT's form, see `output_delta`): g = magnitude / (n + eps) per row, and

    y = base(x) + m * ((g - 1) * W x + g * scale * delta(x))
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
    """The weight's own norms plus eps, rounded as `gain` rounds its divisor: with the same weight (a fresh
    adapter's zero delta) the gain is then exactly 1 and the decomposition the identity, bit for bit."""
    return norm(weight.float(), axis) + EPS


def gain(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: str) -> torch.Tensor:
    """g = magnitude / (||W + delta|| + eps), magnitude-shaped, fp32; the norm is a constant in backward."""
    with torch.no_grad():
        divisor = norm(weight.float() + delta.float(), axis) + EPS
    return magnitude.float() / divisor


def per_channel(v: torch.Tensor, weight_dim: int) -> torch.Tensor:
    """An [out]-sized tensor shaped to broadcast over a layer's output: [out] (Linear), [out, 1, 1] (Conv2d)."""
    return v.reshape(-1, *[1] * (weight_dim - 2))


def output_delta(wx: torch.Tensor, adapter_out: torch.Tensor, row_gain: torch.Tensor,
                 strength: float = 1.0) -> torch.Tensor:
    """m * ((g - 1) * W x + g * adapter_out): what a DoRA adapter on axis "out" adds to base(x), given W x
    without bias, adapter_out = scale * delta(x), and g = `gain` on "out". Equals (W' - W) x, W' unformed."""
    g = per_channel(row_gain, row_gain.dim())
    return strength * ((g - 1) * wx + g * adapter_out)


def decomposed_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: str,
                      strength: float = 1.0) -> torch.Tensor:
    """W + m * (W' - W) in fp32 (see the module docstring); `delta` is scale * delta W."""
    w = weight.float()
    rescaled = (w + delta.float()) * gain(w, delta, magnitude, axis)
    return rescaled if strength == 1.0 else w + strength * (rescaled - w)

"""Pure adapter math, one module per kind. `KINDS` is the only registry: inject, file checking and the tests
all read it, so a new kind (LoHa, LoKr, ...) is one new file here and one line in `KINDS`.

Each kind module declares:

    FACTORS                                       factor names, in the order they are passed around
    BASES                                         the nn layer classes it applies to (nn.Linear, nn.Conv2d)
    fits(weight_shape) -> bool                    optional: False where the kind has nothing to add there
    ROW_SLICES = True                             optional: it adapts row slices of a fused Linear (q/v)
    shapes(weight_shape, rank, layout)            -> {factor name: shape}; used to initialise and to check files
    init_params(weight_shape, rank, init, layout) -> {factor name: tensor}
    delta_weight(params, layout)                  -> tensor shaped like the base weight
    add_delta_weight(weight, params, layout, c)   -> weight + c * delta W, fused where possible
    delta_forward(x, params, layout)              -> delta W applied to x, without forming delta W
    stack(params_list, coefs, layout)             -> one params dict of the kind whose delta is sum_i coef_i * delta_i
                                                     (optional: a kind without it blends one adapter at a time)

and, optionally, the fast training path (a kind without it trains through autograd):

    inner(x, params, layout)                      -> what backward needs of the forward besides x
    forward_into(y, x, params, layout, c)         y += c * delta_forward(x) in place; returns `inner`
    backward(x, grad_out, params, layout, into=None, coef=1.0, saved=None)
                                                  -> {factor name: gradient of <grad_out, delta_forward(x)>};
                                                     with `into`, adds coef * (its gradient w.r.t. x) to it

`layout` is what the kind needs to know of its base layer: a `RowLayout` for Linear (which output rows),
the base layer's `Conv2dOp` for convolutions (kernel geometry). The scale rule is `scale` below.
"""

from __future__ import annotations

import math
from types import ModuleType

from torch import nn

from . import locon, lora, tucker
from .ops import Conv2dOp, LinearOp, op_for
from .rows import RowLayout

KINDS: dict[str, ModuleType] = {"lora": lora, "locon": locon, "tucker": tucker}

FAST_PATH = ("inner", "forward_into", "backward")


def scale(alpha: float, rank: int, rslora: bool = False) -> float:
    """alpha / rank, or alpha / sqrt(rank) for rsLoRA: the factor training fixed between delta and output."""
    return alpha / (math.sqrt(rank) if rslora else rank)


def has_fast_path(kind: ModuleType) -> bool:
    """Whether the kind brings its own forward/backward (else AdapterLayer runs it through autograd)."""
    return all(hasattr(kind, f) for f in FAST_PATH)


def applies(name: str, base: nn.Module) -> bool:
    """Whether kind `name` can adapt this base layer (its class is in BASES, and `fits` agrees)."""
    kind = KINDS[name]
    return isinstance(base, kind.BASES) and getattr(kind, "fits", lambda shape: True)(tuple(base.weight.shape))


def kind_for(base: nn.Module, preferred: dict[type, str]) -> str:
    """The kind for a base layer: the one `preferred` names for its class (e.g. {nn.Linear: "lora",
    nn.Conv2d: "tucker"}) where it applies, else the first kind in KINDS that does."""
    wanted = next((k for cls, k in preferred.items() if isinstance(base, cls)), None)
    for name in ((wanted,) if wanted in KINDS else ()) + tuple(KINDS):
        if applies(name, base):
            return name
    raise TypeError(f"no adapter kind applies to {type(base).__name__}")


__all__ = ["KINDS", "RowLayout", "Conv2dOp", "LinearOp", "op_for", "scale", "has_fast_path", "applies",
           "kind_for", "lora", "locon", "tucker"]

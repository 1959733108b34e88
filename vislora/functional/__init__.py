"""Pure adapter math, one module per kind, all with the same functions:

    init_params(weight_shape, rank, init, layout) -> {factor name: tensor}
    delta_weight(params, layout)                  -> tensor shaped like the base weight
    add_delta_weight(weight, params, layout, c)   -> weight + c * delta W, fused where possible
    delta_forward(x, params, layout)              -> delta W applied to x, without forming delta W
    stack(params_list, coefs, layout)             -> one params dict of the same kind whose delta is
                                                     sum_i coef_i * delta_i (optional: kinds without it run
                                                     one by one)
    backward(x, grad_out, params, layout, into=None, coef=1.0)
                                                  -> {factor name: gradient of <grad_out, delta_forward(x)>};
                                                     with `into`, adds coef * (its gradient w.r.t. x) to it

`layout` is what the kind needs to know of its base layer: a `RowLayout` for Linear (which output rows),
the base layer's `Conv2dOp` for convolutions (kernel geometry).
"""

from types import ModuleType

from . import locon, lora, tucker
from .lora import RowLayout
from .ops import Conv2dOp, LinearOp, op_for

KINDS: dict[str, ModuleType] = {"lora": lora, "locon": locon, "tucker": tucker}

__all__ = ["KINDS", "RowLayout", "Conv2dOp", "LinearOp", "op_for", "lora", "locon", "tucker"]

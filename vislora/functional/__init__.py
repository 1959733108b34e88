"""Pure adapter math, one module per kind. `KINDS` is the only registry: inject, file checking and the tests
all read it, so a new kind (LoHa, LoKr, ...) is one new file here and one line in `KINDS`.

Each kind module declares:

    FACTORS                                       factor names, in the order they are passed around
    BASES                                         the nn layer classes it applies to (nn.Linear, nn.Conv2d)
    fits(weight_shape) -> bool                    optional: False where the kind has nothing to add there
    complete(factor names) -> bool                optional, for kinds with variants (LoHa's Tucker cores,
                                                     LoKr's whole or low-rank sides): whether a set of factors
                                                     is one of them; default: all of FACTORS
    check(weight_shape, params) -> [problems]     optional: a file's factors against a base weight, for kinds
                                                     whose shapes do not follow from the rank alone (LoKr)
    ROW_SLICES = True                             optional: it adapts row slices of a fused Linear (q/v)
    shapes(weight_shape, rank, layout)            -> {factor name: shape}; used to initialise and to check files
    init_params(weight_shape, rank, init, layout) -> {factor name: tensor}
    delta_weight(params, layout)                  -> tensor shaped like the base weight
    delta_forward(x, params, layout)              -> delta W applied to x, differentiable by autograd
    stack(params_list, coefs, layout)             -> one params dict of the kind whose delta is sum_i coef_i * delta_i
                                                     (optional: a kind without it blends one adapter at a time)

and its file-facing facts, which vislora.formats, blend and tools read (none names a kind):

    LYCORIS_PARTS                                 {factor: kohya/LyCORIS key part}; none: no kohya layout
    ALGO, NETWORK                                 LyCORIS's algo name; the network module that writes it
                                                     ("networks.lora" for kohya's own, else "lycoris.kohya")
    NETWORK_ARGS                                  optional: ss_network_args the kind needs (use_tucker)
    accepts(factors) -> bool                      optional: whether a file's factors are this kind (LoRA's
                                                     2-D down against LoCon's 4-D one, same key parts)
    file_rank(params) -> int | None               the rank a file's alpha divides; None (or absent): no
                                                     rank, read back as rank = alpha = 1 (scale 1)
    in_features(params) -> int                    the base weight's input width the factors were made for
    output_rows(params) -> (names, n) | None      optional: the factors whose rows are delta W's output rows,
                                                     n rows of it each (LoKr's W1: W2's height), the others
                                                     shared by every row; None: rows are mixed (Tucker cores)
    MATRIX_PRODUCT = True                         optional: delta W = up @ down as matrices, so adapters
                                                     stack (merge, blend) exactly by concatenating the rank
    fit(factors, weight_shape) -> (kind, factors) optional: a file's factors for a layer (LoRA on a 1 x 1
                                                     conv is LoCon)
    flat_in_files(factors) -> names               optional: factors LyCORIS stores flattened for convs
    carry_scale(params, scale), FILE_ALPHA        optional: where a rank-less kind keeps a scale; False:
                                                     files carry no alpha

This is the reference: AdapterLayer trains any kind through autograd on `delta_forward`. Kinds may also have
a fast path in vislora.kernels (hand-written backward passes, weight folds), tested equal to this one.

`layout` is what the kind needs to know of its base layer: a `RowLayout` for Linear (which output rows),
the base layer's `Conv2dOp` for convolutions (kernel geometry). The scale rule is `scale` below.
"""

from __future__ import annotations

import math
from types import ModuleType

from torch import nn

from . import full, locon, loha, lokr, lora, tucker
from .ops import Conv2dOp, LinearOp, op_for
from .rows import RowLayout

KINDS: dict[str, ModuleType] = {"lora": lora, "locon": locon, "tucker": tucker, "loha": loha, "lokr": lokr,
                                "full": full}

def scale(alpha: float, rank: int, rslora: bool = False) -> float:
    """alpha / rank, or alpha / sqrt(rank) for rsLoRA: the factor training fixed between delta and output."""
    return alpha / (math.sqrt(rank) if rslora else rank)


def complete(kind: ModuleType, names: set[str] | frozenset[str]) -> bool:
    """Whether these factor names make one adapter of the kind (one of its variants)."""
    test = getattr(kind, "complete", None)
    return test(set(names)) if test is not None else set(kind.FACTORS) <= set(names)


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


__all__ = ["complete", "KINDS", "RowLayout", "Conv2dOp", "LinearOp", "op_for", "scale", "applies",
           "kind_for", "lora", "locon", "tucker"]

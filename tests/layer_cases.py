"""Every layer geometry the adapter kinds support, as (kind, base layer, layout, input) cases, in float64."""

import torch
from torch import nn

from vislora.functional import KINDS, RowLayout, applies, op_for
from vislora.kernels import has_kernel

CONVS = {
    "3x3 stride 2 pad 1": dict(kernel_size=3, stride=2, padding=1),
    "3x3 pad 1": dict(kernel_size=3, padding=1),
    "1x1": dict(kernel_size=1),
    "3x3 dilation 2 pad 2": dict(kernel_size=3, padding=2, dilation=2),
    "5x3 stride (2,1) pad (2,1)": dict(kernel_size=(5, 3), stride=(2, 1), padding=(2, 1)),
}



def layers():
    """(base layer, layout, input) for every geometry we support; `slices` marks q/v-slice layouts."""
    lin = nn.Linear(12, 18).double()
    x_lin = torch.randn(3, 5, 12, dtype=torch.float64)
    out = [(lin, RowLayout.full(18), x_lin), (lin, RowLayout(18, ((0, 6), (12, 18))), x_lin)]  # q and v thirds
    for kw in CONVS.values():
        conv = nn.Conv2d(6, 10, **kw).double()
        out.append((conv, op_for(conv), torch.randn(2, 6, 9, 11, dtype=torch.float64)))
    return out


def cases():
    """(kind, base layer, layout, input) for every kind in KINDS and every geometry it applies to."""
    cases = []
    for kind in KINDS:
        for layer, layout, x in layers():
            sliced = isinstance(layout, RowLayout) and not layout.is_full
            if applies(kind, layer) and (not sliced or getattr(KINDS[kind], "ROW_SLICES", False)):
                cases.append((kind, layer, layout, x))
    return cases


def params(kind, layer, layout, rank=3):
    """Random (non-zero) factors of `kind` for this layer, in float64."""
    factors = KINDS[kind].init_params(layer.weight.shape, rank, "random", layout)
    return {n: p.double() for n, p in factors.items()}


CASES = cases()
IDS = [f"{k}-{type(layer).__name__}-{i}" for i, (k, layer, _, _) in enumerate(CASES)]
# the kinds with a fast path (vislora.kernels); the others train through autograd
FAST = [(c, i) for c, i in zip(CASES, IDS) if has_kernel(c[0])]
FAST_CASES, FAST_IDS = [c for c, _ in FAST], [i for _, i in FAST]

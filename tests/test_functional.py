"""Pure math: delta_forward == base op with delta_weight; hand-written gradients == autograd."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vislora.functional import KINDS, RowLayout, op_for
from vislora.functional.fold import FoldTerm, folded_forward

torch.manual_seed(0)

CONVS = {
    "3x3 stride 2 pad 1": dict(kernel_size=3, stride=2, padding=1),
    "3x3 pad 1": dict(kernel_size=3, padding=1),
    "1x1": dict(kernel_size=1),
    "3x3 dilation 2 pad 2": dict(kernel_size=3, padding=2, dilation=2),
    "5x3 stride (2,1) pad (2,1)": dict(kernel_size=(5, 3), stride=(2, 1), padding=(2, 1)),
}


def _cases():
    """(kind, base layer, layout, input) for every kind and geometry we support."""
    cases = []
    lin = nn.Linear(12, 18).double()
    x_lin = torch.randn(3, 5, 12, dtype=torch.float64)
    cases.append(("lora", lin, RowLayout.full(18), x_lin))
    cases.append(("lora", lin, RowLayout(18, ((0, 6), (12, 18))), x_lin))  # q and v thirds
    for name, kw in CONVS.items():
        conv = nn.Conv2d(6, 10, **kw).double()
        x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
        cases.append(("locon", conv, op_for(conv), x))
        if conv.kernel_size != (1, 1):
            cases.append(("tucker", conv, op_for(conv), x))
    return cases


CASES = _cases()
IDS = [f"{k}-{type(layer).__name__}-{i}" for i, (k, layer, _, _) in enumerate(CASES)]


def _params(kind, layer, layout, rank=3):
    params = KINDS[kind].init_params(layer.weight.shape, rank, "random", layout)
    return {n: p.double() for n, p in params.items()}


@pytest.mark.parametrize("kind,layer,layout,x", CASES, ids=IDS)
def test_delta_forward_equals_delta_weight(kind, layer, layout, x):
    fn = KINDS[kind]
    params = _params(kind, layer, layout)
    delta = fn.delta_weight(params, layout)
    assert delta.shape == layer.weight.shape
    assert delta.abs().max() > 0  # the check below means something only for a non-zero delta
    by_weight = op_for(layer).forward(x, delta, None)
    by_factors = fn.delta_forward(x, params, layout)
    torch.testing.assert_close(by_factors, by_weight, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,layer,layout,x", CASES, ids=IDS)
def test_factor_grads_equal_autograd(kind, layer, layout, x):
    fn = KINDS[kind]
    params = {n: p.requires_grad_() for n, p in _params(kind, layer, layout).items()}
    out = fn.delta_forward(x, params, layout)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, list(params.values()), grad_out)
    got = fn.factor_grads(x, grad_out, {n: p.detach() for n, p in params.items()}, layout)
    for (name, _), e in zip(params.items(), expected):
        torch.testing.assert_close(got[name], e, rtol=1e-10, atol=1e-10, msg=name)


def test_slices_touch_only_their_rows():
    layout = RowLayout(18, ((0, 6), (12, 18)))
    params = KINDS["lora"].init_params(torch.Size([18, 12]), 2, "random", layout)
    delta = KINDS["lora"].delta_weight(params, layout)
    assert delta[6:12].abs().max() == 0
    assert delta[:6].abs().min() > 0 and delta[12:].abs().min() > 0


@pytest.mark.parametrize("kind,layer,layout,x", CASES, ids=IDS)
def test_folded_forward_and_backward_match_unfolded(kind, layer, layout, x):
    """Two adapters folded into the weight: same output and same gradients as base + deltas via autograd."""
    fn = KINDS[kind]
    layer = layer.requires_grad_(False)
    p1 = {n: p.requires_grad_() for n, p in _params(kind, layer, layout).items()}
    p2 = {n: p.requires_grad_() for n, p in _params(kind, layer, layout, rank=2).items()}
    c1, c2 = 0.7, -1.3
    x1 = x.clone().requires_grad_()
    ref = layer(x1) + c1 * fn.delta_forward(x1, p1, layout) + c2 * fn.delta_forward(x1, p2, layout)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x1, *p1.values(), *p2.values()], g)

    x2 = x.clone().requires_grad_()
    terms = (FoldTerm(fn, layout, c1, tuple(p1)), FoldTerm(fn, layout, c2, tuple(p2)))
    out = folded_forward(x2, layer.weight, layer.bias, op_for(layer), terms, (*p1.values(), *p2.values()))
    got_grads = torch.autograd.grad(out, [x2, *p1.values(), *p2.values()], g)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for e, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(e, r, rtol=1e-9, atol=1e-9)


def test_folded_under_autocast_bf16():
    """Under CPU autocast the fold computes in bf16 and returns fp32 factor gradients."""
    layer = nn.Linear(16, 24).requires_grad_(False)
    layout = RowLayout.full(24)
    p = {n: t.requires_grad_() for n, t in KINDS["lora"].init_params(layer.weight.shape, 4, "random", layout).items()}
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = folded_forward(x, layer.weight, layer.bias, op_for(layer), (FoldTerm(KINDS["lora"], layout, 1.0, ("down", "up")),),
                             tuple(p.values()))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert p["down"].grad.dtype == torch.float32 and p["up"].grad.dtype == torch.float32
    ref = layer(x) + KINDS["lora"].delta_forward(x, {k: v.detach() for k, v in p.items()}, layout)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)

"""The fast path (vislora.kernels) against the reference (functional delta_forward through autograd):
hand-written gradients, folds, dropout masks and thin products give the reference's numbers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layer_cases import CASES, FAST_CASES, FAST_IDS, IDS
from layer_cases import params as _params
from vislora.functional import KINDS, RowLayout, op_for
from vislora.kernels import KERNELS, Term
from vislora.kernels.fold import add_delta_weight, folded_forward
from vislora.kernels.unfold import unfolded_forward

torch.manual_seed(0)


@pytest.mark.parametrize("kind,layer,layout,x", FAST_CASES, ids=FAST_IDS)
def test_backward_equals_autograd(kind, layer, layout, x):
    fn = KINDS[kind]
    params = {n: p.requires_grad_() for n, p in _params(kind, layer, layout).items()}
    x = x.clone().requires_grad_()
    out = fn.delta_forward(x, params, layout)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, [x, *params.values()], grad_out)
    start = torch.randn_like(x)
    into = start.clone()
    got = KERNELS[kind].backward(x.detach(), grad_out, {n: p.detach() for n, p in params.items()}, layout, into, -0.5)
    torch.testing.assert_close(into, start - 0.5 * expected[0], rtol=1e-10, atol=1e-10)
    for (name, _), e in zip(params.items(), expected[1:]):
        torch.testing.assert_close(got[name], e, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("kind,layer,layout,x", FAST_CASES, ids=FAST_IDS)
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
    terms = (Term(kind, layout, c1, tuple(p1)), Term(kind, layout, c2, tuple(p2)))
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
        out = folded_forward(x, layer.weight, layer.bias, op_for(layer), (Term("lora", layout, 1.0, ("down", "up")),),
                             tuple(p.values()))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert p["down"].grad.dtype == torch.float32 and p["up"].grad.dtype == torch.float32
    ref = layer(x) + KINDS["lora"].delta_forward(x, {k: v.detach() for k, v in p.items()}, layout)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("kind,layer,layout,x", FAST_CASES, ids=FAST_IDS)
def test_unfolded_with_dropout_matches_autograd(kind, layer, layout, x, p):
    """base(x) + c * delta(dropout(x)), the mask kept as bits for backward: same values and grads."""
    from vislora.kernels.unfold import _dropped, _keep_mask

    fn = KINDS[kind]
    layer = layer.requires_grad_(False)
    params = {n: t.requires_grad_() for n, t in _params(kind, layer, layout).items()}
    torch.manual_seed(7)
    x1 = x.clone().requires_grad_()
    mask = _keep_mask(x1, p) if p else None
    ref = layer(x1) + 0.6 * fn.delta_forward(_dropped(x1, p, mask), params, layout)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x1, *params.values()], g)
    torch.manual_seed(7)
    x2 = x.clone().requires_grad_()
    out = unfolded_forward(x2, layer.weight, layer.bias, op_for(layer), (Term(kind, layout, 0.6, tuple(params), p),),
                           tuple(params.values()))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, exp in zip(torch.autograd.grad(out, [x2, *params.values()], g), ref_grads):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-9)


def test_dropout_saves_the_input_the_rank_sized_hidden_and_mask_bits_only():
    """With dropout the unfolded op keeps x, the adapter's [rank, tokens] hidden and the mask as bits for
    backward; autograd would keep x, dropout(x) and a byte per element of mask."""
    layer = nn.Linear(64, 96).requires_grad_(False)
    layout = RowLayout.full(96)
    params = {n: t.requires_grad_() for n, t in KINDS["lora"].init_params(layer.weight.shape, 4, "random", layout).items()}
    x = torch.randn(32, 64, requires_grad=True)
    saved = []
    weights = {t.data_ptr() for t in [layer.weight, layer.bias, *params.values()]}

    def pack(t):
        if t.data_ptr() not in weights:  # parameters are kept anyway; count activations only
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unfolded_forward(x, layer.weight, layer.bias, op_for(layer), (Term("lora", layout, 1.0, ("down", "up"), 0.1),),
                         tuple(params.values()))
    assert sum(saved) == (x.numel() + 4 * x.shape[0]) * x.element_size() + x.numel() // 8


@pytest.mark.parametrize("kind,layer,layout,x", CASES, ids=IDS)
def test_add_delta_weight_equals_weight_plus_scaled_delta(kind, layer, layout, x):
    fn = KINDS[kind]
    params = _params(kind, layer, layout)
    w = layer.weight.detach()
    fused = add_delta_weight(kind, w, params, layout, -0.7)
    torch.testing.assert_close(fused, w - 0.7 * fn.delta_weight(params, layout), rtol=1e-12, atol=1e-12)
    assert fused.data_ptr() != w.data_ptr()  # never written in place


def test_folded_lora_weight_has_padded_rows_and_stays_differentiable():
    """The fold writes into rows a cache line apart (fast BLAS writes); with factors that need gradients
    under grad mode it falls back to a plain differentiable product."""
    lin = nn.Linear(64, 32)
    params = KINDS["lora"].init_params(lin.weight.shape, 4, "random", RowLayout.full(32))
    w = lin.weight.detach()
    fused = add_delta_weight("lora", w, params, RowLayout.full(32), 0.5)
    assert fused.shape == w.shape and fused.stride(0) > w.shape[1]
    torch.testing.assert_close(F.linear(torch.ones(2, 64), fused), F.linear(torch.ones(2, 64), fused.contiguous()))
    down = params["down"].requires_grad_()
    again = add_delta_weight("lora", w, params, RowLayout.full(32), 0.5)
    again.sum().backward()
    torch.testing.assert_close(again, fused)
    assert down.grad is not None


def test_token_split_products_equal_plain_products():
    """The thread-split thin products (used on CPU with several threads) give the plain products' values."""
    from vislora.kernels.ops import project_tokens, reduce_tokens

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a_t, b = torch.randn(8, 1024, dtype=torch.float64), torch.randn(1024, 96, dtype=torch.float64)
        w_t = torch.randn(8, 96, dtype=torch.float64)
        torch.testing.assert_close(reduce_tokens(a_t, b), a_t @ b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(project_tokens(w_t, b), w_t @ b.T, rtol=1e-12, atol=1e-12)
        odd = torch.randn(1023, 96, dtype=torch.float64)  # not divisible: the plain product
        torch.testing.assert_close(project_tokens(w_t, odd), w_t @ odd.T, rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(previous)


def test_large_fp32_thin_products_equal_plain_products(monkeypatch):
    """Products big enough for oneDNN (fp32 on CPU, outside autograd) go there and give BLAS's values, in every
    input layout we pass; small ones and ones that need gradients take the plain product."""
    from vislora.kernels import ops

    calls = []
    real = ops.onednn_linear
    monkeypatch.setattr(ops, "onednn_linear", lambda x, w: calls.append(x.shape) or real(x, w))
    onednn = ops._ONEDNN_LINEAR is not None and torch.backends.mkldnn.enabled
    a_t, b, w_t = torch.randn(8, 1576), torch.randn(1576, 768), torch.randn(8, 768)
    for wide in (b, torch.randn(1576, 1536)[:, 100:868]):  # contiguous, and a column slice (q/v slices)
        torch.testing.assert_close(ops.reduce_tokens(a_t, wide), a_t @ wide, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ops.project_tokens(w_t, wide), w_t @ wide.T, rtol=1e-5, atol=1e-4)
    assert len(calls) == (4 if onednn else 0)  # 8 x 1576 x 768 multiply-adds: over the threshold
    hidden = ops.project_tokens(w_t, b)  # a transposed view, used again as the thin side
    torch.testing.assert_close(ops.reduce_tokens(hidden, b), (w_t @ b.T) @ b, rtol=1e-4, atol=1e-2)
    calls.clear()
    narrow = torch.randn(1576, 16)  # 8 x 1576 x 16: too little work for oneDNN, BLAS takes the transposed view
    torch.testing.assert_close(ops.reduce_tokens(hidden, narrow), (w_t @ b.T) @ narrow, rtol=1e-4, atol=1e-2)
    ops.project_tokens(w_t.double(), b.double())  # not fp32
    assert calls == []
    w_t.requires_grad_()
    ops.project_tokens(w_t, b).sum().backward()  # inside autograd: the differentiable product
    assert calls == [] and w_t.grad is not None


def test_onednn_fallback_gives_the_same_numbers(monkeypatch):
    """Where torch has no oneDNN linear, the one function that calls it falls back to the plain product."""
    from vislora.kernels import ops

    x, w = torch.randn(1576, 768), torch.randn(8, 768)
    with_op = ops.onednn_linear(x, w)
    monkeypatch.setattr(ops, "_ONEDNN_LINEAR", None)
    without = ops.onednn_linear(x, w)
    torch.testing.assert_close(without, x @ w.T, rtol=0, atol=0)
    torch.testing.assert_close(with_op, without, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(64,), (3, 40), (2, 5, 7)])
def test_bitmask_round_trip(shape):
    from vislora.kernels import bitmask

    mask = torch.rand(shape) >= 0.3
    packed = bitmask.pack(mask)
    if mask.numel() % 8 == 0:
        assert packed.dtype == torch.uint8 and packed.numel() == mask.numel() // 8
    assert torch.equal(bitmask.unpack(packed, mask.shape), mask)


CONV_CASES = [c for c in FAST_CASES if isinstance(c[1], nn.Conv2d)]


@pytest.mark.parametrize("kind,layer,layout,x", CONV_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONV_CASES)])
def test_unfolded_takes_channels_last_inputs(kind, layer, layout, x):
    """A channels-last conv output cannot take the adapter inside the batched product; the result is the same."""
    fn = KINDS[kind]
    layer = layer.float().requires_grad_(False)
    params = {n: p.float().requires_grad_() for n, p in _params(kind, layer, layout).items()}
    x = x.float().to(memory_format=torch.channels_last)
    x1 = x.clone().requires_grad_()
    ref = layer(x1) + 0.6 * fn.delta_forward(x1, params, layout)
    assert not layer(x1).is_contiguous()  # the case under test
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x1, *params.values()], g)
    x2 = x.clone().requires_grad_()
    out = unfolded_forward(x2, layer.weight, layer.bias, op_for(layer), (Term(kind, layout, 0.6, tuple(params)),),
                           tuple(params.values()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, exp in zip(torch.autograd.grad(out, [x2, *params.values()], g), ref_grads):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-4)


# -- the fast path equals the reference, kind by kind, through AdapterLayer ---------------------------------
LAYER_OF_KIND = {
    "lora": lambda: nn.Linear(24, 20),
    "locon": lambda: nn.Conv2d(6, 10, 3, padding=1),
    "tucker": lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1),
}
INPUTS = {  # few tokens: the adapters run unfolded; many: folded into the weight
    "lora": {False: (2, 3, 24), True: (4, 40, 24)},
    "locon": {False: (1, 6, 2, 3), True: (2, 6, 12, 12)},
    "tucker": {False: (1, 6, 3, 3), True: (2, 6, 16, 16)},
}


def _two_adapters(kind):
    from vislora.layers import AdapterLayer

    torch.manual_seed(3)
    layer = AdapterLayer(LAYER_OF_KIND[kind]().double().requires_grad_(False))
    for name, rank, alpha in (("a", 4, 8.0), ("b", 2, 1.0)):
        layer.add(name, layer.new_slot(kind, rank, alpha, init="random").double())
    layer.adapters["b"].strength = -0.6
    return layer


def _run(layer, x, fast):
    for slot in layer.adapters.values():
        slot.fast = fast
    x = x.clone().requires_grad_()
    out = layer(x)
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    params = [p for s in layer.adapters.values() for p in s.params.values()]
    return out.detach(), torch.autograd.grad(out, [x, *params], grad_out)


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_kernel_path_equals_reference_in_forward_and_gradients(kind, fold):
    """AdapterLayer with two adapters (strengths 1 and -0.6): the kernel path and the reference (functional
    delta_forward through autograd) agree to 1e-10 (float64) in output, input gradient and factor gradients."""
    from vislora import kernels

    layer = _two_adapters(kind)
    x = torch.randn(INPUTS[kind][fold], dtype=torch.float64)
    terms = tuple(kernels.Term(kind, s.layout, s.coef, s.factor_names) for s in layer.adapters.values())
    assert kernels.should_fold(x, layer.base_layer.weight, layer.op, terms) == fold
    out, grads = _run(layer, x, fast=True)
    ref_out, ref_grads = _run(layer, x, fast=False)
    assert (ref_out - layer.base_layer(x)).abs().max() > 1e-2  # the adapters change the output
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding,mode", [(1, "reflect"), ((2, 1), "circular"), ("same", "replicate"),
                                          ("same", "reflect"), ("valid", "zeros"), (1, "zeros")])
def test_conv_op_reproduces_the_layer_from_its_public_attributes(padding, mode):
    """op_for reads padding amounts from the layer's public attributes; its forward equals the layer's."""
    conv = nn.Conv2d(3, 4, (4, 3), padding=padding, padding_mode=mode, dilation=(1, 2) if padding == "same" else 1)
    x = torch.randn(2, 3, 9, 10)
    torch.testing.assert_close(op_for(conv).forward(x, conv.weight, conv.bias), conv(x), rtol=0, atol=0)

"""LoHa, LoKr, full-weight and DoRA math against the lycoris-lora package (fp32, 1e-6 relative)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vislora.functional import Conv2dOp, RowLayout, dora, full, loha, lokr, op_for
from vislora.kernels.fold import add_delta_weight

lycoris = pytest.importorskip("lycoris.functional")
from lycoris.functional import general as ly_general  # noqa: E402
from lycoris.functional import loha as ly_loha  # noqa: E402
from lycoris.functional import lokr as ly_lokr  # noqa: E402

TOL = dict(rtol=1e-6, atol=1e-6)


def _rand(*shape, seed=[0]):
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 1e-3, "the delta is zero: the comparison would prove nothing"
    torch.testing.assert_close(a / scale, b / scale, **TOL)


LINEAR = (20, 24)
CONV = (12, 8, 3, 3)


@pytest.mark.parametrize("weight_shape,tucker", [(LINEAR, False), (CONV, False), (CONV, True)])
def test_loha_delta_matches_lycoris(weight_shape, tucker):
    r = 4
    params = {n: _rand(*s) for n, s in loha.shapes(weight_shape, r, None, tucker=tucker).items()}
    ours = loha.delta_weight(params, None) * 0.5
    theirs = ly_loha.diff_weight(params["w1_b"], params["w1_a"], params["w2_b"], params["w2_a"],
                                 params.get("t1"), params.get("t2"), gamma=0.5, backend="torch")
    _close(ours, theirs.reshape(weight_shape))


@pytest.mark.parametrize("weight_shape", [LINEAR, CONV])
@pytest.mark.parametrize("variant", ["w1+w2ab", "w1ab+w2ab", "w1+w2", "w1+tucker", "w1ab+w2"])
def test_lokr_delta_and_scale_match_lycoris(weight_shape, variant):
    if variant == "w1+tucker" and len(weight_shape) == 2:
        pytest.skip("Tucker is for convs")
    r, alpha = 3, 2.0
    (a, c), (b, d) = lokr.factorization(weight_shape[0]), lokr.factorization(weight_shape[1])
    k = tuple(weight_shape[2:])
    p = {}
    if variant.startswith("w1ab"):
        p["w1_a"], p["w1_b"] = _rand(a, r), _rand(r, b)
    else:
        p["w1"] = _rand(a, b)
    if variant.endswith("w2ab"):
        p["w2_a"], p["w2_b"] = _rand(c, r), _rand(r, d, *k)
    elif variant.endswith("tucker"):
        p["t2"], p["w2_a"], p["w2_b"] = _rand(r, r, *k), _rand(r, c), _rand(r, d)
    else:
        p["w2"] = _rand(c, d, *k)
    assert lokr.check(weight_shape, p) == []
    rank = lokr.file_rank(p)
    scale = 1.0 if rank is None else alpha / rank  # both sides whole: scale 1 whatever alpha says
    ours = lokr.delta_weight(p, None) * scale
    factors = [p.get(n) for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")]
    _close(ours, ly_lokr.kron_weight(*factors, scale=scale, backend="torch").reshape(weight_shape))
    if "t2" not in p:
        # lycoris' own scale rule (gamma / rank, rank from the low-rank factors, else 1). Its functional API
        # reads a Tucker W2's rank from w2_a.shape[1], which is c there; consumers use w2_b.shape[0] = r.
        theirs = ly_lokr.diff_weight(*factors, gamma=alpha if rank else 1.0, backend="torch")
        _close(ours, theirs.reshape(weight_shape))
    assert lokr.check((weight_shape[0] + 1, *weight_shape[1:]), p)  # a wrong base is refused


@pytest.mark.parametrize("weight_shape", [LINEAR, CONV])
@pytest.mark.parametrize("axis", dora.AXES)
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_dora_matches_lycoris_weight_decompose(weight_shape, axis, strength):
    weight, delta = _rand(*weight_shape), _rand(*weight_shape) * 0.3
    magnitude = dora.init_magnitude(weight, axis) * (1.5 + _rand(*dora.magnitude_shape(weight_shape, axis)).abs())
    assert dora.axis_of(tuple(magnitude.shape), weight_shape) == axis
    ours = dora.decomposed_weight(weight, delta, magnitude, axis, strength)
    full_dora = ly_general._weight_decompose(weight + delta, magnitude, 1.0, axis == "out")
    theirs = weight + strength * (full_dora - weight)  # ComfyUI's strength blend over LyCORIS's W'
    _close(ours - weight, theirs - weight)
    # A zero delta with the base's own norms is the identity.
    same = dora.decomposed_weight(weight, torch.zeros_like(weight), dora.init_magnitude(weight, axis), axis)
    torch.testing.assert_close(same, weight, rtol=1e-6, atol=1e-6)


def _layer(shape):
    if len(shape) == 2:
        return torch.nn.Linear(shape[1], shape[0]), RowLayout.full(shape[0]), _rand(5, shape[1])
    conv = torch.nn.Conv2d(shape[1], shape[0], shape[2], padding=1, stride=2)
    return conv, op_for(conv), _rand(2, shape[1], 9, 9)


@pytest.mark.parametrize("kind", [loha, lokr, full])
@pytest.mark.parametrize("shape", [LINEAR, CONV])
def test_forward_equals_weight_merge(kind, shape):
    layer, layout, x = _layer(shape)
    params = kind.init_params(torch.Size(shape), 4, "random", layout)
    if kind is full:
        params["diff_b"] = _rand(shape[0])
    delta = kind.delta_weight(params, layout)
    assert delta.abs().max() > 0
    merged = add_delta_weight(kind.__name__.rsplit('.', 1)[-1], layer.weight.detach(), params, layout, 0.7)
    bias = layer.bias.detach() + (0.7 * params["diff_b"] if "diff_b" in params else 0)
    if isinstance(layout, Conv2dOp):
        want = layout.forward(x, merged, bias)
    else:
        want = F.linear(x, merged, bias)
    got = layer(x).detach() + 0.7 * kind.delta_forward(x, params, layout)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fresh_adapters_are_no_ops():
    for kind in (loha, lokr, full):
        for shape in (LINEAR, CONV):
            params = kind.init_params(torch.Size(shape), 4, "default", None)
            assert kind.delta_weight(params, None).abs().max() == 0


def test_tucker_locon_matches_lycoris():
    from lycoris.functional import locon as ly_locon

    from vislora.functional import tucker

    params = {"down": _rand(4, 8, 1, 1), "mid": _rand(4, 4, 3, 3), "up": _rand(12, 4, 1, 1)}
    theirs = ly_locon.diff_weight(params["down"], params["up"], params["mid"], gamma=0.5, backend="torch")
    _close(tucker.delta_weight(params, None) * 0.5, theirs.reshape(CONV))

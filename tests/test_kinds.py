"""Adapter kinds come from one table: every kind x dtype from functional.KINDS, and a kind added from a test
(a table entry plus its functions) injects, trains, saves, loads and merges with no edit anywhere else."""

import math
import types

import pytest
import torch
from torch import nn

import vislora
from vislora.config import kinds_for
from vislora.functional import KINDS, applies

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}  # merged vs unmerged outputs


class Tiny(nn.Module):
    """One Linear and one 3 x 3 Conv2d, so every kind has a layer it applies to."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.lin = nn.Linear(6, 5)

    def forward(self, x):
        return self.lin(self.conv(x).mean((2, 3)))


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    return Tiny().to(dtype)


def _options(kind):
    """inject keywords that ask for `kind` on the layer classes it applies to."""
    opts = {}
    if kind in kinds_for(nn.Linear):
        opts["linear"] = kind
    if kind in kinds_for(nn.Conv2d):
        opts["conv"] = kind
    return opts


def _targets(model, kind):
    return [path for path, m in model.named_modules() if path and applies(kind, m)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_and_dtype_injects_merges_and_round_trips(tmp_path, kind, dtype):
    model = _tiny(dtype)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        base = model(x)
    report = vislora.inject(model, _targets(model, kind), rank=2, alpha=8, init="random", **_options(kind))
    assert report.matched and {s["default"]["kind"] for s in vislora.status(model).values()} == {kind}
    tol = TOL[dtype]
    with torch.no_grad():
        adapted = model(x)
        assert (adapted.float() - base.float()).abs().max() > 3 * tol  # the checks below mean something
        vislora.merge(model)
        torch.testing.assert_close(model(x).float(), adapted.float(), rtol=tol, atol=tol)
        vislora.unmerge(model)
        assert torch.equal(model(x), adapted)
    path = vislora.save_adapter(model, tmp_path / "a.safetensors")
    other = _tiny(dtype)
    vislora.load_adapter(other, path)
    with torch.no_grad():
        assert torch.equal(other(x), adapted)


def _twin():
    """A throwaway kind: delta W = b @ a on Linear layers, factors named a / b, no hand-written backward."""
    kind = types.ModuleType("twin")
    kind.FACTORS, kind.BASES = ("a", "b"), (nn.Linear,)
    kind.shapes = lambda weight_shape, rank, layout: {"a": (rank, weight_shape[1]), "b": (weight_shape[0], rank)}

    def init_params(weight_shape, rank, init, layout):
        want = kind.shapes(weight_shape, rank, layout)
        a, b = torch.empty(want["a"]), torch.zeros(want["b"])
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if init == "random":
            nn.init.normal_(b, std=1.0 / rank)
        return {"a": a, "b": b}

    kind.init_params = init_params
    kind.delta_weight = lambda params, layout: params["b"] @ params["a"]
    kind.add_delta_weight = lambda weight, params, layout, coef: weight + coef * kind.delta_weight(params, layout)
    kind.delta_forward = lambda x, params, layout: x @ params["a"].T.to(x.dtype) @ params["b"].T.to(x.dtype)
    return kind


def test_a_kind_added_from_a_test_injects_trains_saves_loads_and_merges(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, "twin", _twin())
    model = _tiny()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(x)
    report = vislora.inject(model, "lin", rank=3, alpha=6, linear="twin", init="random")
    slot = model.lin.adapters["default"]
    assert report.matched == ["lin"] and slot.kind == "twin" and set(dict(slot.named_parameters())) == {"a", "b"}
    with torch.no_grad():
        adapted = model(x)
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(adapted, model.lin.base_layer(model.conv(x).mean((2, 3)))
                               + 2.0 * model.conv(x).mean((2, 3)) @ (slot.b @ slot.a).T, rtol=1e-5, atol=1e-5)

    # one training step through autograd (the kind has no hand-written backward)
    before = {n: p.detach().clone() for n, p in slot.named_parameters()}
    optimizer = torch.optim.SGD(vislora.trainable_parameters(model), lr=0.1)
    assert {id(p) for p in vislora.trainable_parameters(model)} == {id(slot.a), id(slot.b)}
    model(x).square().mean().backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in slot.named_parameters())
    with torch.no_grad():
        trained = model(x)

    path = vislora.save_adapter(model, tmp_path / "twin.safetensors")
    read = vislora.read_adapter(path)
    assert read.modules["lin"].kind == "twin" and set(read.modules["lin"].factors) == {"a", "b"}
    other = _tiny()
    vislora.load_adapter(other, path)
    with torch.no_grad():
        assert torch.equal(other(x), trained)
        vislora.merge(other)
        torch.testing.assert_close(other(x), trained, rtol=1e-5, atol=1e-5)
        vislora.unmerge(other)
        assert torch.equal(other(x), trained)


def test_accelerate_state_reset_has_a_working_fallback(monkeypatch):
    """The one function that drops accelerate's single-process state works with and without its private reset."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    from vislora.train.accelerate_state import forget_single_process_state

    for private in (True, False):
        PartialState(cpu=True)
        assert PartialState._shared_state
        if not private:
            monkeypatch.delattr(AcceleratorState, "_reset_state")
        assert forget_single_process_state()
        assert not PartialState._shared_state and not AcceleratorState._shared_state
    assert not forget_single_process_state()  # nothing to drop


def test_a_kind_in_one_file_round_trips_through_the_vislora_and_kohya_formats(tmp_path, monkeypatch):
    """tests/toy_kind.py declares its maths and its file-facing facts (LyCORIS parts, algo, rank read-back,
    input width); one line adds it. vislora and kohya/LyCORIS files then write, read and load it exactly."""
    import toy_kind

    from vislora import formats
    from vislora.formats.arch import in_features

    monkeypatch.setitem(KINDS, "toy", toy_kind)  # the one line
    model = _tiny()
    vislora.inject(model, "lin", rank=3, alpha=6, linear="toy", init="random")
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model.lin.base_layer(model.conv(x).mean((2, 3)))
        adapted = model(x)
    assert (adapted - base).abs().max() > 1e-3
    slot = model.lin.adapters["default"]
    for fmt in ("vislora", "kohya", "lycoris"):
        path = vislora.save_adapter(model, tmp_path / f"toy_{fmt}.safetensors", format=fmt)
        read = formats.read(path)
        (module,) = read.modules.values()
        assert module.kind == "toy" and (module.rank, module.alpha) == (3, 6.0)
        assert torch.equal(module.factors["a"], slot.a.detach()) and torch.equal(module.factors["b"], slot.b.detach())
        assert in_features("toy", module.factors) == 6
        if fmt != "vislora":
            assert set(formats.container.read(path)[0]) == {"lycoris_lin.toy_a.weight", "lycoris_lin.toy_b.weight",
                                                            "lycoris_lin.alpha"}
            assert '"algo": "toy"' in read.metadata["ss_network_args"]
        other = _tiny()
        vislora.load_adapter(other, path)
        with torch.no_grad():
            assert torch.equal(other(x), adapted)

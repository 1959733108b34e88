"""DoRA adapters made by inject(dora=True): a fresh one is an exact no-op; outputs and gradients equal PEFT's
LoraConfig(use_dora=True) on Linear and Conv2d; they train, save, load, merge and unmerge exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import vislora
from conftest import images, tiny_vit
from vislora.functional import KINDS, applies

peft = pytest.importorskip("peft")

TOL = 1e-5  # fp32: ours adds eps = 1.2e-7 to the norm as LyCORIS does, PEFT does not


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 8))


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, bias=False))


MODELS = {"linear": (_mlp, lambda: torch.randn(5, 12, generator=torch.Generator().manual_seed(1))),
          "conv2d": (_convnet, lambda: torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1)))}


def _slots(model, name="default"):
    return {path: layer.adapters[name] for path, layer in vislora.adapter_layers(model)}


def _ours(make, seed=2):
    """A random-init DoRA adapter on layers "0" and "2", magnitudes moved off the weight norms."""
    model = make()
    torch.manual_seed(seed)
    vislora.inject(model, ["0", "2"], rank=3, alpha=6, dora=True, init="random")
    with torch.no_grad():
        for slot in _slots(model).values():
            slot.magnitude.mul_(1.0 + 0.3 * torch.rand(slot.magnitude.shape))
    return model


def _peft_twin(make, ours):
    """PEFT's DoRA on the same base, with our factors and magnitudes copied in."""
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0", "2"], use_dora=True)
    theirs = peft.get_peft_model(make(), config)
    with torch.no_grad():
        for path, slot in _slots(ours).items():
            module = theirs.base_model.model.get_submodule(path)
            module.lora_A["default"].weight.copy_(slot.down)
            module.lora_B["default"].weight.copy_(slot.up)
            magnitude = module.lora_magnitude_vector["default"].weight
            magnitude.copy_(slot.magnitude.reshape(magnitude.shape))
    return theirs


def test_fresh_dora_is_an_exact_no_op_and_random_init_is_not():
    for make, inputs in MODELS.values():
        x, base = inputs(), make()
        with torch.no_grad():
            want = base(x)
        fresh = make()
        vislora.inject(fresh, ["0", "2"], rank=3, dora=True)
        assert all(s.dora_axis == "out" and s.magnitude.requires_grad for s in _slots(fresh).values())
        with torch.no_grad():
            assert torch.equal(fresh(x), want)  # gain is exactly 1 and up = 0: bit for bit
            vislora.merge(fresh)
            assert torch.equal(fresh(x), want)
        with torch.no_grad():
            assert (_ours(make)(x) - want).abs().max() > 1e-2


@pytest.mark.parametrize("model", MODELS)
def test_outputs_and_gradients_equal_peft(model):
    make, inputs = MODELS[model]
    x = inputs()
    ours = _ours(make)
    theirs = _peft_twin(make, ours)
    with torch.no_grad():
        assert (ours(x) - make()(x)).abs().max() > 1e-2
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=TOL, atol=TOL)
    probe = torch.randn(y_ours.shape, generator=torch.Generator().manual_seed(3))
    (y_ours * probe).sum().backward()
    (y_theirs * probe).sum().backward()
    for path, slot in _slots(ours).items():
        module = theirs.base_model.model.get_submodule(path)
        pairs = {"down": module.lora_A["default"].weight, "up": module.lora_B["default"].weight,
                 "magnitude": module.lora_magnitude_vector["default"].weight}
        for factor, their_param in pairs.items():
            mine = getattr(slot, factor).grad
            assert mine.abs().max() > 1e-4, (path, factor)
            torch.testing.assert_close(mine, their_param.grad.reshape(mine.shape), rtol=TOL, atol=TOL)


def test_the_weight_norm_is_a_constant_in_backward():
    """The magnitude's gradient is sum over x of (W + scale dW) x / n with n held fixed (DoRA paper, 4.3)."""
    layer = nn.Linear(6, 4)
    model = nn.Sequential(layer)
    torch.manual_seed(4)
    vislora.inject(model, ["0"], rank=2, dora=True, init="random")
    slot = _slots(model)["0"]
    x = torch.randn(3, 6)
    model(x).sum().backward()
    with torch.no_grad():
        combined = layer.weight + slot.delta_weight()
        want = (x @ combined.T).sum(0) / (combined.norm(dim=1) + torch.finfo(torch.float32).eps)
    torch.testing.assert_close(slot.magnitude.grad.flatten(), want, rtol=1e-6, atol=1e-6)


def _kind_cases():
    cases = []
    for make, inputs in MODELS.values():
        layer = make()[0]
        cases += [(make, inputs, kind) for kind in KINDS if kind != "full" and applies(kind, layer)]
    return cases


@pytest.mark.parametrize("make, inputs, kind", _kind_cases(),
                         ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", ""))
def test_every_kind_takes_dora(make, inputs, kind):
    x = inputs()
    with torch.no_grad():
        base = make()(x)
    option = "linear" if isinstance(make()[0], nn.Linear) else "conv"
    model = make()
    vislora.inject(model, ["0", "2"], rank=2, dora=True, **{option: kind})
    with torch.no_grad():
        assert torch.equal(model(x), base)
    model = make()
    torch.manual_seed(5)
    vislora.inject(model, ["0", "2"], rank=2, dora=True, init="random", **{option: kind})
    loss = model(x).square().mean()
    loss.backward()
    assert all(s.magnitude.grad is not None for s in _slots(model).values())
    with torch.no_grad():
        unmerged = model(x)
        assert (unmerged - base).abs().max() > 1e-3
        vislora.merge(model)
        torch.testing.assert_close(model(x), unmerged, rtol=TOL, atol=TOL)


def _train(model, x, labels, steps=8):
    optimizer = torch.optim.Adam(vislora.trainable_parameters(model), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_then_save_load_merge_unmerge(tmp_path):
    x, labels = images(), torch.arange(len(images())) % 10
    model = tiny_vit()
    vislora.inject(model, "vit.attn", rank=4, dora=True)
    magnitudes = {p: s.magnitude.detach().clone() for p, s in _slots(model).items()}
    losses = _train(model.train(), x, labels)
    model.eval()
    assert losses[-1] < 0.8 * losses[0], losses
    moved = max((s.magnitude - magnitudes[p]).abs().max().item() for p, s in _slots(model).items())
    assert moved > 1e-3
    with torch.no_grad():
        want = model(x)
    for fmt in ("vislora", "kohya"):
        path = vislora.save_adapter(model, tmp_path / f"{fmt}.safetensors", format=fmt)
        again = tiny_vit()
        vislora.load_adapter(again, path)
        for p, slot in _slots(model).items():
            loaded = _slots(again)[p]
            assert loaded.dora_axis == "out"
            for factor, value in {**slot.params, "magnitude": slot.magnitude}.items():
                assert torch.equal(getattr(loaded, factor), value), (fmt, p, factor)
        with torch.no_grad():
            torch.testing.assert_close(again(x), want, rtol=0, atol=1e-6)
    assert vislora.read_adapter(tmp_path / "vislora.safetensors").config.dora
    pristine = {p: layer.base_layer.weight.detach().clone() for p, layer in vislora.adapter_layers(model)}
    with torch.no_grad():
        vislora.merge(model)
        torch.testing.assert_close(model(x), want, rtol=TOL, atol=TOL)
        vislora.unmerge(model)
        assert all(torch.equal(layer.base_layer.weight, pristine[p]) for p, layer in vislora.adapter_layers(model))
        assert torch.equal(model(x), want)


def test_peft_loads_what_we_trained(tmp_path):
    x, labels = images(), torch.arange(len(images())) % 10
    model = tiny_vit()
    vislora.inject(model, "vit.attn", rank=4, dora=True)
    _train(model.train(), x, labels, steps=3)
    model.eval()
    vislora.save_adapter(model, tmp_path / "peft", format="peft")
    theirs = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path / "peft").eval()
    with torch.no_grad():
        want = model(x)
        assert (want - tiny_vit()(x)).abs().max() > 1e-3
        torch.testing.assert_close(theirs(x), want, rtol=TOL, atol=TOL)


def test_config_field_round_trips_and_old_configs_read_as_plain():
    config = vislora.AdapterConfig("vit.attn", dora=True)
    assert vislora.AdapterConfig.from_dict(copy.deepcopy(config.to_dict())).dora
    old = {k: v for k, v in config.to_dict().items() if k != "dora"}
    assert vislora.AdapterConfig.from_dict(old).dora is False

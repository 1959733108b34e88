"""Full-weight adapters with a bias delta (LyCORIS diff_b): merge adds strength * diff_b to the bias, unmerge
and the bank's unfuse put the pristine bias back bit-exact, and a bias-free layer refuses before any change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vislora
from conftest import checksum
from vislora import AdapterBank, AdapterLayer, AdapterStateError

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))


def _model(bias: bool = True) -> nn.Module:
    """conv (full + diff_b, and a LoRA beside it) -> flatten -> linear (full + diff_b): adapters at strength 0.7."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10, bias=bias))
    g = torch.Generator().manual_seed(1)
    for i in (0, 3):
        layer = AdapterLayer(model[i])
        full = layer.new_slot("full", 1, 1.0)
        weight = layer.base_layer.weight
        full.set_factors({"diff": torch.randn(weight.shape, generator=g) * 0.05,
                          "diff_b": torch.randn(weight.shape[0], generator=g) * 0.5})
        full.strength = 0.7
        layer.add("full", full)
        if i == 0:
            lora = layer.new_slot("locon", 2, 2.0, init="random")
            lora.strength = 0.5
            layer.add("lora", lora)
        model[i] = layer
    return model


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def test_merge_adds_diff_b_and_unmerge_is_bit_exact():
    model = _model()
    with vislora.disabled(model):
        base = _out(model)
    adapted = _out(model)
    assert (adapted - base).abs().max() > 1e-2  # the adapters (and their bias deltas) change the output
    before = checksum(model)
    pristine_bias = model[3].base_layer.bias.detach().clone()
    assert vislora.merge(model) == 2
    want_bias = pristine_bias + 0.7 * model[3].adapters["full"].diff_b.detach()
    torch.testing.assert_close(model[3].base_layer.bias.detach(), want_bias, rtol=0, atol=1e-7)
    torch.testing.assert_close(_out(model), adapted, rtol=1e-6, atol=1e-6)
    vislora.set_strength(model, "full", 0.2)  # merged layers follow the new strength, bias included
    want_bias = pristine_bias + 0.2 * model[3].adapters["full"].diff_b.detach()
    torch.testing.assert_close(model[3].base_layer.bias.detach(), want_bias, rtol=0, atol=1e-7)
    vislora.unmerge(model)
    vislora.set_strength(model, "full", 0.7)
    assert checksum(model) == before
    assert torch.equal(_out(model), adapted)


def test_effective_bias_serves_hosts_that_bypass_forward():
    layer = _model()[3]
    x = torch.randn(4, 8 * 36, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(F.linear(x, layer.weight, layer.bias), layer(x), rtol=1e-6, atol=1e-6)


def test_a_bias_free_layer_refuses_before_any_change():
    model = _model(bias=False)
    adapted = _out(model)
    before = checksum(model)
    with pytest.raises(AdapterStateError, match=r"3 \(full\)"):
        vislora.merge(model)
    assert checksum(model) == before and not model[0].merged and torch.equal(_out(model), adapted)
    bank = AdapterBank(model)
    with pytest.raises(AdapterStateError, match="diff_b"):
        bank.fuse()
    assert checksum(model) == before and not bank.fused
    vislora.merge(model, "lora")  # the adapters without a bias delta still merge
    torch.testing.assert_close(_out(model), adapted, rtol=1e-6, atol=1e-6)


def test_bank_fuse_reblend_unfuse_bit_exact():
    model = _model()
    bank = AdapterBank(model)
    before = checksum(model)
    unfused = _out(model)
    bank.fuse()
    torch.testing.assert_close(_out(model), unfused, rtol=1e-6, atol=1e-6)
    bank.set_strengths({"full": 0.3, "lora": 0.0})
    fused = _out(model)
    bank.unfuse()
    assert checksum(model) == before
    torch.testing.assert_close(_out(model), fused, rtol=1e-6, atol=1e-6)
    assert (fused - unfused).abs().max() > 1e-2  # the re-blend changed something
    bank.set_strengths({"full": 0.7, "lora": 0.5})
    assert torch.equal(_out(model), unfused)

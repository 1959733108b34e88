"""AdapterBank on a diffusion transformer: per-block strengths by double / single / joint block index, weight
linearity of a blend, and exact re-blends (fused blends re-made from the pristine weights, bit for bit)."""

from __future__ import annotations

import pytest
import torch

import vislora
from dit_models import run, tiny


def _bank(tmp_path, family="Flux.1"):
    source = tiny(family)
    for i, name in enumerate(("a", "b")):
        vislora.inject(source, "transformer.blocks", rank=2, alpha=2, init="random", name=name)
        vislora.save_adapter(source, tmp_path / f"{name}.safetensors", name=name, format="kohya")
    model = tiny(family)
    bank = vislora.AdapterBank(model)
    bank.load("a", tmp_path / "a.safetensors")
    bank.load("b", tmp_path / "b.safetensors")
    return model, bank


def test_per_block_strengths_by_double_and_single_index(tmp_path):
    model, bank = _bank(tmp_path)
    bank.set_strengths({"a": {"*": 0.5, "double.1": 0.0, "single": 2.0}, "b": 1.0})
    by_layer = bank.layer_strengths("a")
    assert by_layer["transformer_blocks.0.attn.to_q"] == 0.5
    assert by_layer["transformer_blocks.1.attn.add_k_proj"] == 0.0
    assert by_layer["single_transformer_blocks.1.proj_mlp"] == 1.0
    assert set(bank.layer_strengths("b").values()) == {1.0}


def test_blend_is_linear_in_the_weights_and_re_blends_exactly(tmp_path):
    model, bank = _bank(tmp_path)
    layer = model.get_submodule("single_transformer_blocks.0.attn.to_q")
    w0 = layer.base_layer.weight.detach().clone()
    deltas = {n: layer.adapters[n].delta_weight().detach() for n in ("a", "b")}
    bank.set_strengths({"a": 0.7, "b": -0.3})
    bank.fuse()
    fused = layer.base_layer.weight.detach().clone()
    torch.testing.assert_close(fused, w0 + 0.7 * deltas["a"] - 0.3 * deltas["b"], rtol=0, atol=1e-6)
    out = run(model, "Flux.1")
    bank.set_strengths({"a": 1.0, "b": 1.0})
    bank.set_strengths({"a": 0.7, "b": -0.3})  # back: the blend is re-made from the pristine weights
    assert torch.equal(layer.base_layer.weight, fused)
    assert torch.equal(run(model, "Flux.1"), out)
    bank.unfuse()
    assert torch.equal(layer.base_layer.weight, w0)
    torch.testing.assert_close(run(model, "Flux.1"), out, rtol=1e-4, atol=1e-5)  # unfused == fused


def test_a_flux_block_vector_sets_base_then_each_double_and_single_block(tmp_path):
    """ComfyUI Inspire Pack's Flux layout: BASE, double 0..D-1, single 0..S-1 (tiny Flux.1: 2 + 2 blocks)."""
    model, bank = _bank(tmp_path)
    bank.set_strengths({"a": "lbw:1,0.5,0,2,0.25", "b": {"*": 0.5, "lbw": "0,1,1,0,0"}})
    a, b = bank.layer_strengths("a"), bank.layer_strengths("b")
    assert a["transformer_blocks.0.attn.to_q"] == 0.5 and a["transformer_blocks.1.ff.net.2"] == 0.0
    assert a["single_transformer_blocks.0.proj_mlp"] == 2.0 and a["single_transformer_blocks.1.attn.to_v"] == 0.25
    assert b["transformer_blocks.1.attn.add_k_proj"] == 0.5 and b["single_transformer_blocks.0.proj_out"] == 0.0


def test_a_block_vector_of_the_wrong_length_changes_nothing(tmp_path):
    import pytest

    model, bank = _bank(tmp_path)
    bank.set_strengths({"a": 0.7})
    with pytest.raises(ValueError, match="5 comma-separated numbers: BASE"):
        bank.set_strengths({"a": "lbw:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"})  # a UNet's 17 values
    assert set(bank.layer_strengths("a").values()) == {0.7}


@pytest.mark.parametrize("family", ["Flux.2", "SD3"])
def test_fused_equals_unfused_and_re_blends_are_exact_on_every_family(tmp_path, family):
    model, bank = _bank(tmp_path, family)
    base_out = run(model, family)
    bank.set_strengths({"a": 0.6, "b": {"*": -0.4, "joint.0" if family == "SD3" else "double.0": 1.5}})
    unfused = run(model, family)
    assert (unfused - base_out).abs().max() > 1e-3  # the blend changes the output
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("base_layer.weight")}
    bank.fuse()
    fused = run(model, family)
    torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-5)
    once = {n: p.detach().clone() for n, p in model.named_parameters() if n in weights}
    bank.set_strengths({"a": 2.0, "b": 0.0})
    bank.set_strengths({"a": 0.6, "b": {"*": -0.4, "joint.0" if family == "SD3" else "double.0": 1.5}})
    assert all(torch.equal(p, once[n]) for n, p in model.named_parameters() if n in once)
    assert torch.equal(run(model, family), fused)
    bank.unfuse()
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)

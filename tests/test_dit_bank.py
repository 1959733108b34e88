"""AdapterBank on a diffusion transformer: per-block strengths by double / single / joint block index, weight
linearity of a blend, and exact re-blends (fused blends re-made from the pristine weights, bit for bit)."""

from __future__ import annotations

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

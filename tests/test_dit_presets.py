"""Diffusion-transformer presets and families: module counts on full-size Flux.1-dev, FLUX.2-klein-4B and
SD3.5-medium built on the meta device, text-encoder presets on tiny T5 and Qwen3 encoders, the family
fingerprint, and a file made for one family refused on another with the model unchanged."""

from __future__ import annotations

import pytest
import torch

import vislora
from dit_models import full_size, inputs, run, tiny
from vislora import AdapterCompatError
from vislora.formats import arch
from vislora.targets import TargetRule, adaptable_modules, resolve

# preset -> modules per model (the table in docs/transformers.md)
COUNTS = {
    "Flux.1-dev": {"transformer.attn": 152, "transformer.ff": 76, "transformer.single": 190,
                   "transformer.blocks": 418, "transformer.mod": 77, "transformer.embed": 9, "transformer.all": 495},
    "FLUX.2-klein-4B": {"transformer.attn": 40, "transformer.ff": 20, "transformer.single": 40,
                        "transformer.blocks": 100, "transformer.mod": 4, "transformer.embed": 5,
                        "transformer.all": 104},
    "SD3.5-medium": {"transformer.attn": 243, "transformer.ff": 94, "transformer.single": 0,
                     "transformer.blocks": 337, "transformer.mod": 49, "transformer.embed": 7, "transformer.all": 386},
}
ADAPTABLE = {"Flux.1-dev": 504, "FLUX.2-klein-4B": 109, "SD3.5-medium": 393}
FAMILY = {"Flux.1-dev": "Flux.1", "FLUX.2-klein-4B": "Flux.2", "SD3.5-medium": "SD3"}


@pytest.mark.parametrize("name", list(COUNTS))
def test_preset_counts_on_full_size_models(name):
    model = full_size(name)
    assert len(adaptable_modules(model)) == ADAPTABLE[name]
    for preset, count in COUNTS[name].items():
        if count == 0:
            with pytest.raises(AdapterCompatError, match="matches no"):
                resolve(model, [TargetRule(preset)])
            continue
        targets, _ = resolve(model, [TargetRule(preset)])
        assert len(targets) == count, preset
    assert arch.of_model(model).family == FAMILY[name]


def test_full_size_widths():
    flux = full_size("Flux.1-dev")
    assert flux.transformer_blocks[0].attn.to_q.weight.shape == (3072, 3072)
    assert (len(flux.transformer_blocks), len(flux.single_transformer_blocks)) == (19, 38)
    klein = full_size("FLUX.2-klein-4B")
    assert (len(klein.transformer_blocks), len(klein.single_transformer_blocks)) == (5, 20)
    assert klein.single_transformer_blocks[0].attn.to_qkv_mlp_proj.weight.shape == (3 * 3072 + 2 * 9216, 3072)
    sd35 = full_size("SD3.5-medium")
    assert len(sd35.transformer_blocks) == 24
    assert sum(b.attn2 is not None for b in sd35.transformer_blocks) == 13


def test_text_encoder_presets_on_t5_and_language_models():
    from transformers import Qwen3Config, Qwen3ForCausalLM, T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu"))
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=4))
    for family in ("text", "text2", "text3"):
        assert len(resolve(t5, [TargetRule(f"{family}.attn")])[0]) == 2 * 4  # q, k, v, o
        assert len(resolve(t5, [TargetRule(f"{family}.mlp")])[0]) == 2 * 3  # wi_0, wi_1, wo
        assert len(resolve(lm, [TargetRule(f"{family}.attn")])[0]) == 2 * 4  # q/k/v/o_proj
        assert len(resolve(lm, [TargetRule(f"{family}.mlp")])[0]) == 2 * 3  # gate/up/down_proj
    assert "lm_head" not in {t.path for t in resolve(lm, [TargetRule("text.all")])[0]}


@pytest.mark.parametrize("name", ["Flux.1", "Flux.2", "SD3"])
def test_family_of_tiny_models_and_their_files(tmp_path, name):
    model = tiny(name)
    assert arch.of_model(model).family == name
    vislora.inject(model, "transformer.all", rank=2, init="random")
    for fmt in ("vislora", "diffusers"):
        path = vislora.save_adapter(model, tmp_path / f"{fmt}.safetensors", format=fmt)
        assert arch.of_file(vislora.read_adapter(path).modules).family == name


def test_unet_and_transformer_names():
    unet = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": None}
    assert arch.family_of(unet).name == "UNet"  # a UNet's transformer_blocks are not a Flux's
    assert arch.family_of(["lora_unet_double_blocks_0_img_attn_qkv"]).name == "Flux.1"
    assert arch.family_of(["lora_unet_joint_blocks_3_x_block_attn_qkv"]).name == "SD3"
    assert arch.family_of(["transformer.transformer_blocks.0.attn.to_q"]) is None  # shared by every family


@pytest.mark.parametrize("made_for, put_on", [("Flux.1", "SD3"), ("SD3", "Flux.1"), ("Flux.1", "Flux.2"),
                                              ("Flux.2", "Flux.1")])
def test_a_file_for_another_family_is_refused_and_changes_nothing(tmp_path, made_for, put_on):
    source = tiny(made_for)
    vislora.inject(source, "transformer.blocks", rank=2, init="random")  # attention alone names no family
    path = vislora.save_adapter(source, tmp_path / "a.safetensors")
    model = tiny(put_on)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = run(model, put_on)
    with pytest.raises(AdapterCompatError, match=rf"made for {made_for}; this model is {put_on}") as e:
        vislora.load_adapter(model, path)
    assert e.value.category == "wrong-base"
    assert vislora.adapter_names(model) == []
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(run(model, put_on), out)


def test_a_unet_file_on_a_transformer_is_refused():
    file_arch = arch.of_file({"lora_unet_down_blocks_0_attentions_0_proj_in": None})
    assert arch.mismatch(file_arch, arch.of_model(tiny("Flux.1"))) == (
        "the file was made for a UNet; this model is Flux.1 (UNet and Flux.1 are different model families)")

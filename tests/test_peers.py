"""Outputs equal PEFT's on the same weights, and diffusers' load_lora_weights reads our files."""

import copy

import pytest
import torch
from conftest import images, run_unet, tiny_pipeline, tiny_unet, tiny_vit, tokens, unet_inputs

import vislora

peft = pytest.importorskip("peft")

VIT_REGEX = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
UNET_REGEX = (r".*(attn[12]\.(to_q|to_k|to_v|to_out\.0)|resnets\.\d+\.(conv1|conv2|conv_shortcut)"
              r"|(down|up)samplers\.\d+\.conv|attentions\.\d+\.(proj_in|proj_out))")


def _peft_copy(model, regex, rank, alpha):
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=regex, init_lora_weights=False)
    return peft.inject_adapter_in_model(config, copy.deepcopy(model))


def _copy_factors(ours, theirs):
    """Our down/up into PEFT's lora_A/lora_B, module by module."""
    copied = 0
    for path, layer in vislora.adapter_layers(ours):
        slot = layer.adapters["default"]
        peft_layer = theirs.get_submodule(path)
        with torch.no_grad():
            peft_layer.lora_A["default"].weight.copy_(slot.down)
            peft_layer.lora_B["default"].weight.copy_(slot.up)
        assert peft_layer.scaling["default"] == pytest.approx(slot.scale)
        copied += 1
    return copied


def test_vit_equals_peft():
    base = tiny_vit()
    ours = copy.deepcopy(base)
    vislora.inject(ours, "vit.all", rank=4, alpha=8, init="random")
    theirs = _peft_copy(base, VIT_REGEX, 4, 8)
    assert _copy_factors(ours, theirs) == 8
    x = images()
    with torch.no_grad():
        reference = base(x)
        ours_out, theirs_out = ours(x), theirs(x)
    assert not torch.allclose(ours_out, reference, atol=1e-3)
    torch.testing.assert_close(ours_out, theirs_out, rtol=1e-5, atol=1e-5)


def test_unet_attention_and_locon_equal_peft():
    base = tiny_unet()
    ours = copy.deepcopy(base)
    vislora.inject(ours, ["unet.attn", "unet.conv"], rank=4, alpha=2, init="random")
    theirs = _peft_copy(base, UNET_REGEX, 4, 2)
    n = _copy_factors(ours, theirs)
    assert n == len(list(vislora.adapter_layers(ours))) > 20
    inputs = unet_inputs()
    reference = run_unet(base, inputs)
    ours_out, theirs_out = run_unet(ours, inputs), run_unet(theirs, inputs)
    assert not torch.allclose(ours_out, reference, atol=1e-3)
    torch.testing.assert_close(ours_out, theirs_out, rtol=1e-5, atol=1e-5)


def test_peft_reads_our_vit_file(tmp_path):
    """Our file's tensors load into a PEFT model by key (set_peft_model_state_dict) and give our outputs."""
    import safetensors.torch

    base = tiny_vit()
    ours = copy.deepcopy(base)
    vislora.inject(ours, "vit.qv", rank=3, alpha=6, init="random")  # q/v slices: written as plain rank-6 LoRA
    path = vislora.save_adapter(ours, tmp_path / "a.safetensors")
    state = safetensors.torch.load_file(path)
    theirs = _peft_copy(base, r".*blocks\.\d+\.attn\.qkv", 6, 12)  # same scale 2.0 at the fused rank
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not [k for k in result.unexpected_keys if "lora" in k]
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strength", [1.0])
def test_diffusers_load_lora_weights_reads_our_pipeline_file(tmp_path, strength):
    pipe = tiny_pipeline()
    # Per-module ranks and alphas on purpose: diffusers must get each module's scale from our metadata.
    vislora.inject(pipe, {"unet.attn": {"rank": 4, "alpha": 2}, "unet.conv": {"rank": 8, "alpha": 4},
                          "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": {"rank": 2, "alpha": 8},
                          "text.attn": {"rank": 4, "alpha": 1}}, init="random")
    path = vislora.save_adapter(pipe, tmp_path / "pytorch_lora_weights.safetensors")
    inputs = unet_inputs()
    ids = tokens(length=16)
    ours_unet = run_unet(pipe.unet, inputs)
    with torch.no_grad():
        ours_text = pipe.text_encoder(ids).last_hidden_state

    theirs = tiny_pipeline()
    base_unet = run_unet(theirs.unet, inputs)
    assert not torch.allclose(ours_unet, base_unet, atol=1e-3)
    theirs.load_lora_weights(str(path), adapter_name="ours")
    torch.testing.assert_close(run_unet(theirs.unet, inputs), ours_unet, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(theirs.text_encoder(ids).last_hidden_state, ours_text, rtol=1e-4, atol=1e-4)


def test_we_read_diffusers_saved_file(tmp_path):
    """The other direction: a file diffusers writes (PEFT adapter, alpha in metadata) loads into vislora."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = tiny_pipeline()
    config = peft.LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                             init_lora_weights=False)
    pipe.unet.add_adapter(config)
    inputs = unet_inputs()
    expected = run_unet(pipe.unet, inputs)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet), unet_lora_adapter_metadata=config.to_dict())
    ours = tiny_pipeline()
    report = vislora.load_adapter(ours, tmp_path / "pytorch_lora_weights.safetensors")
    assert report.format == "peft_diffusers" and not report.unmatched
    torch.testing.assert_close(run_unet(ours.unet, inputs), expected, rtol=1e-5, atol=1e-5)

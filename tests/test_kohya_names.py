"""kohya / LDM / SGM module names built from config-built SD1.5- and SDXL-shaped models."""

from __future__ import annotations

import pytest

from sd_models import clip, sd15_unet, sdxl_unet
from vislora.formats.kohya_names import SD_BLOCKS, SDXL_BLOCKS, build, ldm_prefixes, mangle, skeleton
from vislora.targets import adaptable_modules


@pytest.fixture(scope="module")
def sd15():
    return sd15_unet()


@pytest.fixture(scope="module")
def sdxl():
    return sdxl_unet()


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_every_module_has_unique_names_that_invert(which, request):
    unet = request.getfixturevalue(which)
    names = build(unet)
    assert not names.ambiguous
    modules = set(adaptable_modules(unet))
    for naming in ("diffusers", "lycoris"):
        table = names.names[naming]
        assert {p for _, p in table} == modules
        assert len(set(table.values())) == len(table)
        for where, name in table.items():
            assert names.modules[name] == where
    # LDM names exist for everything but the modules LDM has no place for (none in these UNets).
    ldm = names.names["ldm"]
    assert {p for _, p in ldm} == modules
    assert len(set(ldm.values())) == len(ldm)
    assert all(names.modules[n] == w for w, n in ldm.items())


def test_sd15_ldm_names_follow_the_spec(sd15):
    names = build(sd15).modules
    assert names["lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"] == (
        "", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    assert names["lora_unet_input_blocks_1_0_in_layers_2"] == ("", "down_blocks.0.resnets.0.conv1")
    assert names["lora_unet_output_blocks_2_1_conv"] == ("", "up_blocks.0.upsamplers.0.conv")  # no attention
    assert names["lora_unet_output_blocks_5_2_conv"] == ("", "up_blocks.1.upsamplers.0.conv")
    assert names["lora_unet_input_blocks_3_0_op"] == ("", "down_blocks.0.downsamplers.0.conv")
    assert names["lora_unet_middle_block_1_proj_in"] == ("", "mid_block.attentions.0.proj_in")
    assert names["lora_unet_middle_block_2_out_layers_3"] == ("", "mid_block.resnets.1.conv2")
    assert names["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"][1].endswith(
        "attn1.to_out.0")
    # 16 transformers x 12 modules: the kohya default target count for SD1.5.
    assert sum(1 for p in adaptable_modules(sd15) if ".attentions." in p) == 192


def test_sdxl_sgm_names_follow_the_spec(sdxl):
    names = build(sdxl).modules
    assert names["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"] == (
        "", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
    assert names["lora_unet_input_blocks_1_0_in_layers_2"] == ("", "down_blocks.0.resnets.0.conv1")
    assert names["lora_unet_output_blocks_2_2_conv"] == ("", "up_blocks.0.upsamplers.0.conv")
    assert names["lora_unet_output_blocks_5_2_conv"] == ("", "up_blocks.1.upsamplers.0.conv")
    assert names["lora_unet_label_emb_0_0"] == ("", "add_embedding.linear_1")
    assert sum(1 for p in adaptable_modules(sdxl) if ".attentions." in p) == 722  # ComfyUI's patch count


def test_ldm_names_agree_with_diffusers_own_converter(sdxl):
    """diffusers' SGM block mapper plus its kohya key converter send each of our SGM names to the diffusers
    path we resolve it to (up to its attention-processor spelling)."""
    import torch
    from diffusers.loaders.lora_conversion_utils import (_convert_non_diffusers_lora_to_diffusers,
                                                         _maybe_map_sgm_blocks_to_diffusers)

    ldm = build(sdxl).names["ldm"]
    state = {f"{n}.lora_{part}.weight": torch.zeros(1, 1) for n in ldm.values() for part in ("down", "up")}
    converted, _ = _convert_non_diffusers_lora_to_diffusers(_maybe_map_sgm_blocks_to_diffusers(state, sdxl.config))
    theirs = {k.removeprefix("unet.").replace(".processor.", ".").replace("_lora.down.weight", "")
              .replace(".lora.down.weight", "").replace("to_out", "to_out.0").replace("to_out.0.0", "to_out.0")
              for k in converted if k.endswith("down.weight")}
    assert theirs == {path for _, path in ldm}


def test_text_encoder_names_use_hf_clip_paths():
    te = clip(32)
    names = build(te)
    assert names.modules["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == (
        "", [p for p in adaptable_modules(te) if p.endswith("layers.0.self_attn.q_proj")][0])


def test_mangle():
    assert mangle("lora_unet", "down_blocks.0.attentions.0.proj_in") == "lora_unet_down_blocks_0_attentions_0_proj_in"


def test_block_counts_come_from_the_model():
    assert len([k for k in ldm_prefixes(sdxl_unet((1, 1, 1))) if "attentions" in k]) == 11


def test_skeleton_from_config_names_like_the_model(sd15, sdxl):
    assert ldm_prefixes(skeleton(SD_BLOCKS)) == ldm_prefixes(sd15)
    assert ldm_prefixes(skeleton(SDXL_BLOCKS)) == ldm_prefixes(sdxl)
    assert ldm_prefixes(skeleton(dict(sdxl.config))) == ldm_prefixes(sdxl)

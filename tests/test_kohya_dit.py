"""kohya files of Flux.1 and SD3 in their original layouts: fused qkv / linear1 read exactly onto diffusers'
split modules and written back bit for bit, the outputs of tiny transformers unchanged, and diffusers' own
converter reading our Flux file to the same delta weights on the full-size Flux.1-dev (meta device for the
shapes, real tensors for the adapters)."""

from __future__ import annotations

import pytest
import torch

import vislora
from dit_files import FULL_PICKS, delta, full_size_flux_adapter
from dit_models import run, tiny
from vislora.formats import AdapterFile, container, kohya


def _saved(tmp_path, family):
    model = tiny(family)
    vislora.inject(model, "transformer.all", rank=2, alpha=3, init="random")
    vislora.inject(model, ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v"], rank=1, alpha=2,
                   init="random", name="qv")  # q and v of a fused qkv, k left out
    return model


@pytest.mark.parametrize("family", ["Flux.1", "Flux.2", "SD3"])
@pytest.mark.parametrize("adapter", ["default", "qv"])
def test_kohya_file_loads_with_the_same_output_and_round_trips_bit_exactly(tmp_path, family, adapter):
    model = _saved(tmp_path, family)
    vislora.set_strength(model, "qv" if adapter == "default" else "default", 0.0)
    ours = run(model, family)
    assert (ours - run(tiny(family), family)).abs().max() > 1e-3
    path = vislora.save_adapter(model, tmp_path / "k.safetensors", name=adapter, format="kohya")
    tensors, meta = container.read(path)
    prefix = "lora_unet_joint_blocks_0_x_block_attn_qkv" if family == "SD3" else \
        "lora_unet_double_blocks_0_img_attn_qkv"
    assert f"{prefix}.lora_down.weight" in tensors  # fused, original names
    fresh = tiny(family)
    vislora.load_adapter(fresh, path)
    assert (run(fresh, family) - ours).abs().max() < 1e-5
    # split -> fused -> split -> fused: the same tensors, bit for bit, and the split factors are ours
    parsed = kohya.read(tensors, meta, str(path))
    again, _ = kohya.write(parsed)
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)
    mine = vislora.io.adapter_file(model, adapter).modules
    assert len(parsed.modules) == len(mine)
    for name, w in parsed.modules.items():
        local = name[len("lora_transformer_"):]
        (path_,) = [p for p in mine if p.replace(".", "_") == local]
        assert torch.equal(w.factors["down"], mine[path_].factors["down"])
        if "norm_out" not in path_ and not (family == "SD3" and "transformer_blocks_2_norm1_context" in local):
            assert torch.equal(w.factors["up"], mine[path_].factors["up"])  # (adaLN halves swapped back)
        assert w.scale == mine[path_].scale


def test_our_flux_file_reads_as_diffusers_converter_reads_it_at_full_size():
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    modules, picks = full_size_flux_adapter(), FULL_PICKS
    tensors, _ = kohya.write(AdapterFile("", "vislora", modules))
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in tensors
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(tensors))
    ours = kohya.read(tensors, {}, "x").modules
    for p in picks:
        key = f"transformer.{p}" if f"transformer.{p}.lora_A.weight" in theirs else p  # final_layer: no prefix
        a, b = theirs[f"{key}.lora_A.weight"], theirs[f"{key}.lora_B.weight"]
        want = delta(modules[f"transformer.{p}"])
        torch.testing.assert_close(b.double() @ a.double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(delta(ours[f"lora_transformer_{p.replace('.', '_')}"]), want, rtol=1e-5,
                                   atol=1e-5)
    # the k of add_qkv was not adapted: diffusers gives it a zero delta, vislora no module
    k = theirs["transformer.transformer_blocks.18.attn.add_k_proj.lora_B.weight"]
    assert not k.any() and "lora_transformer_transformer_blocks_18_attn_add_k_proj" not in ours


def test_a_dense_fused_lora_splits_with_a_shared_down():
    """A LoRA trained on the fused layer (dense up) gives each part the whole down and its rows of up."""
    g = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 8, generator=g),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(24, 4, generator=g),
               "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0)}
    parts = kohya.read(tensors, {}, "x").modules
    up = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    for j, part in enumerate(("to_q", "to_k", "to_v")):
        w = parts[f"lora_transformer_transformer_blocks_0_attn_{part}"]
        assert w.rank == 4 and w.alpha == 2.0 and torch.equal(w.factors["up"], up[8 * j:8 * (j + 1)])


def _sd3_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = lambda: CLIPTextModelWithProjection(CLIPTextConfig(  # noqa: E731
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=16)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu")).eval()
    return StableDiffusion3Pipeline(transformer=tiny("SD3"), scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=None, text_encoder=clip(), tokenizer=None, text_encoder_2=clip(),
                                    tokenizer_2=None, text_encoder_3=t5, tokenizer_3=None)


def _encoders(pipe) -> list[torch.Tensor]:
    ids = torch.arange(6)[None]
    with torch.no_grad():
        return [pipe.text_encoder(ids)[0], pipe.text_encoder_2(ids)[0], pipe.text_encoder_3(ids)[0]]


def test_kohya_sd3_pipeline_with_three_text_encoders(tmp_path):
    pipe = _sd3_pipeline()
    vislora.inject(pipe, ["transformer.blocks", "text.all", "text2.attn", "text3.all"], rank=2, alpha=4,
                   init="random")
    ours, encoded = run(pipe.transformer, "SD3"), _encoders(pipe)
    path = vislora.save_adapter(pipe, tmp_path / "sd3.safetensors", format="kohya")
    tensors, meta = container.read(path)
    names = {k.partition(".")[0] for k in tensors}
    assert {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te2_text_model_encoder_layers_1_self_attn_out_proj",
            "lora_te3_encoder_block_0_layer_0_SelfAttention_q", "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0",
            "lora_unet_joint_blocks_0_x_block_attn2_qkv", "lora_unet_joint_blocks_2_context_block_attn_qkv"} <= names
    assert meta["modelspec.architecture"] == "stable-diffusion-3/lora"
    fresh = _sd3_pipeline()
    report = vislora.load_adapter(fresh, path)
    assert not report.unmatched
    assert (run(fresh.transformer, "SD3") - ours).abs().max() < 1e-5
    for a, b in zip(_encoders(fresh), encoded):
        assert (a - b).abs().max() < 1e-5
    again, _ = kohya.write(kohya.read(tensors, meta, str(path)))
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_inspect_shows_family_and_block_coverage(tmp_path):
    from vislora.tools.inspect import _text, describe

    model = tiny("Flux.1")
    vislora.inject(model, "transformer.all", rank=2, init="random")
    for fmt in ("kohya", "diffusers"):
        info = describe(vislora.save_adapter(model, tmp_path / f"{fmt}.safetensors", format=fmt))
        assert info["base"]["name"] == info["base"]["family"] == "Flux.1"
        assert info["components"] == {"transformer": info["modules"]}
        # per double block: 8 attention + 4 feed-forward + 2 modulation; per single block 5 + 1; norm_out
        assert info["blocks"] == {"double.0": 14, "double.1": 14, "single.0": 6, "single.1": 6, "other": 1}
        assert "base: Flux.1" in _text(info)
    sd3 = tiny("SD3")
    vislora.inject(sd3, "transformer.attn", rank=2, init="random")
    info = describe(vislora.save_adapter(sd3, tmp_path / "sd3.safetensors", format="kohya"))
    assert info["base"]["family"] == "SD3" and info["blocks"] == {"joint.0": 12, "joint.1": 8, "joint.2": 7}


def test_inspect_reads_only_the_header_of_a_large_kohya_flux_file(tmp_path):
    """A 1.2 GB kohya Flux.1-dev file (fused layers split on reading) is described from its header alone."""
    from dit_files import sparse_kohya_flux
    from inspect_probe import describe_in_fresh_process

    path, small = tmp_path / "big.safetensors", tmp_path / "small.safetensors"
    modules = sparse_kohya_flux(path)
    sparse_kohya_flux(small, rank=1)
    assert path.stat().st_size > 1.1e9
    out = describe_in_fresh_process(path, small)
    print(f"inspect on a {path.stat().st_size / 1e9:.2f} GB kohya Flux file: {out['seconds']:.3f} s, "
          f"RSS +{out['grew_mb']:.0f} MB")
    info = out["info"]
    assert modules == 314 and info["base"]["family"] == "Flux.1"
    # 19 double blocks: 2 fused qkv -> 3 parts each, 8 more layers; 38 single: linear1 -> 4 parts, 2 more
    assert info["modules"] == 19 * (2 * 3 + 8) + 38 * (4 + 2) + 10
    assert info["blocks"]["double.18"] == 14 and info["blocks"]["single.37"] == 6
    assert out["seconds"] < 2.0 and out["grew_mb"] < 100  # the file is 1,200 MB

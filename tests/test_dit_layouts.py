"""The other Flux layouts ComfyUI and diffusers accept, read exactly onto diffusers' split modules: BFL names under
`diffusion_model.` (both LoRA spellings), XLabs' `processor.qkv_lora1/2`, OneTrainer's `lora_transformer_` and
LyCORIS' `lycoris_` names. Checked against diffusers' own converters where it has one (same delta weights), and
by loading into tiny config-built transformers (same outputs)."""

from __future__ import annotations

import pytest
import torch

import vislora
from dit_files import FULL_PICKS, comfy, delta, full_size_flux_adapter
from dit_models import run, tiny
from vislora.errors import AdapterFormatError
from vislora.formats import AdapterFile, container, kohya, original, read, xlabs


def _adapted(family="Flux.1", preset="transformer.all"):
    model = tiny(family)
    vislora.inject(model, preset, rank=2, alpha=3, init="random")
    assert (run(model, family) - run(tiny(family), family)).abs().max() > 1e-3
    return model


@pytest.mark.parametrize("spelling", ["lora_A", "lora_down"])
def test_diffusion_model_keys_load_with_the_same_output(tmp_path, spelling):
    model = _adapted()
    tensors, meta = container.read(vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya"))
    keys = comfy(tensors, spelling)
    assert f"diffusion_model.double_blocks.0.img_attn.qkv.{'lora_A' if spelling == 'lora_A' else 'lora_down'}.weight" \
        in keys and "diffusion_model.single_blocks.1.linear1.alpha" in keys
    path = container.write(tmp_path / "comfy.safetensors", keys, {})
    fresh = tiny("Flux.1")
    report = vislora.load_adapter(fresh, path)
    assert report.format == "comfy" and not report.unmatched
    assert (run(fresh, "Flux.1") - run(model, "Flux.1")).abs().max() < 1e-5
    assert read(path).modules.keys() == kohya.read(tensors, meta, "k").modules.keys()


def test_diffusion_model_keys_read_as_diffusers_converter_reads_them_at_full_size():
    """diffusers' kohya converter takes ComfyUI's `diffusion_model.` keys (lora_down spelling) too."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    modules = full_size_flux_adapter()
    tensors, _ = kohya.write(AdapterFile("", "vislora", modules))
    keys = comfy(tensors, "lora_down")
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(keys))
    ours = original.read(comfy(tensors, "lora_A"), {}, "x").modules
    for p in FULL_PICKS:
        key = f"transformer.{p}" if f"transformer.{p}.lora_A.weight" in theirs else p  # final_layer: no prefix
        want = delta(modules[f"transformer.{p}"])
        torch.testing.assert_close(theirs[f"{key}.lora_B.weight"].double() @ theirs[f"{key}.lora_A.weight"].double(),
                                   want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(delta(ours[f"lora_transformer_{p.replace('.', '_')}"]), want, rtol=1e-5, atol=1e-5)


def _xlabs_file(prefix: str = "") -> dict[str, torch.Tensor]:
    """x-flux's processor LoRAs on the tiny Flux.1 (width 16, single-block proj_out input 16 + 64): both
    double blocks, single block 1, rank 3, dense ups (trained on the fused layers), no alpha."""
    g = torch.Generator().manual_seed(3)
    shapes = {f"double_blocks.{i}.processor.{layer}": (48 if "qkv" in layer else 16, 16)
              for i in (0, 1) for layer in ("qkv_lora1", "proj_lora1", "qkv_lora2", "proj_lora2")}
    shapes.update({"single_blocks.1.processor.qkv_lora": (48, 16), "single_blocks.1.processor.proj_lora": (16, 80)})
    out = {}
    for module, (rows, cols) in shapes.items():
        out[f"{prefix}{module}.down.weight"] = 0.3 * torch.randn(3, cols, generator=g)
        out[f"{prefix}{module}.up.weight"] = 0.3 * torch.randn(rows, 3, generator=g)
    return out


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
def test_xlabs_file_reads_as_diffusers_converter_reads_it(tmp_path, prefix):
    from diffusers.loaders.lora_conversion_utils import _convert_xlabs_flux_lora_to_diffusers

    tensors = _xlabs_file(prefix)
    theirs = _convert_xlabs_flux_lora_to_diffusers(dict(tensors))
    expected = tiny("Flux.1")  # diffusers' reading, merged into the weights
    with torch.no_grad():
        for key, a in theirs.items():
            if key.endswith(".lora_A.weight"):
                module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
                expected.get_submodule(module).weight += theirs[key.replace("lora_A", "lora_B")] @ a
    path = container.write(tmp_path / "xlabs.safetensors", tensors, {})
    parsed = read(path)
    assert parsed.format == "xlabs" and len(parsed.modules) == len(theirs) // 2 == 4 * 8 // 2 + 4
    fresh = tiny("Flux.1")
    report = vislora.load_adapter(fresh, path)
    assert not report.unmatched
    assert (run(fresh, "Flux.1") - run(tiny("Flux.1"), "Flux.1")).abs().max() > 1e-3
    assert (run(fresh, "Flux.1") - run(expected, "Flux.1")).abs().max() < 1e-5


def test_xlabs_unknown_layer_is_refused():
    tensors = _xlabs_file()
    tensors["double_blocks.0.processor.qkv_lora3.down.weight"] = torch.zeros(3, 16)
    tensors["double_blocks.0.processor.qkv_lora3.up.weight"] = torch.zeros(48, 3)
    with pytest.raises(AdapterFormatError, match="qkv_lora3"):
        xlabs.read(tensors, {}, "x")


def _onetrainer(model) -> dict[str, torch.Tensor]:
    """OneTrainer's layout: every diffusers module under `lora_transformer_<path with underscores>`."""
    out = {}
    for path, w in vislora.io.adapter_file(model).modules.items():
        out.update(kohya.file_tensors(f"lora_transformer_{path.replace('.', '_')}", w))
    return out


def test_onetrainer_keys_load_with_the_same_output_and_agree_with_diffusers(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    model = _adapted()
    tensors = _onetrainer(model)
    path = container.write(tmp_path / "ot.safetensors", tensors, {})
    fresh = tiny("Flux.1")
    assert not vislora.load_adapter(fresh, path).unmatched
    assert (run(fresh, "Flux.1") - run(model, "Flux.1")).abs().max() < 1e-5
    # diffusers' "mixture" converter maps attention and top-level modules (not feed-forwards: it drops their
    # layer names); where it maps, its deltas are ours
    attn = {k: v for k, v in tensors.items() if "_attn_" in k or "_blocks_" not in k}
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(attn))
    ours = read(path).modules
    assert len(theirs) // 2 == len({k.partition(".")[0] for k in attn}) > 20
    for key, a in theirs.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            want = theirs[key.replace("lora_A", "lora_B")].double() @ a.double()
            torch.testing.assert_close(delta(ours[f"lora_transformer_{module.replace('.', '_')}"]), want, rtol=1e-6,
                                       atol=1e-7)


def test_a_file_of_mixed_namings_or_foreign_keys_is_refused(tmp_path):
    model = _adapted()
    tensors, _ = container.read(vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya"))
    keys = comfy(tensors)
    keys["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"] = torch.zeros(2, 4)
    with pytest.raises(AdapterFormatError, match="t5xxl"):
        original.read(keys, {}, "x")

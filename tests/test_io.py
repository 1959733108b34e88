"""save_adapter / load_adapter: bit-exact round trips, strictness, and the file layout."""

import json

import pytest
import safetensors.torch
import torch
from conftest import checksum, images, run_unet, tiny_pipeline, tiny_unet, tiny_vit, unet_inputs

import vislora
from vislora import AdapterCompatError, AdapterWarning


def _adapted_vit(target="vit.all", **kw):
    vit = tiny_vit()
    vislora.inject(vit, target, init="random", **kw)
    return vit


@pytest.mark.parametrize("target,kw", [
    ("vit.all", dict(rank=4, alpha=2)),
    ("vit.qv", dict(rank=3)),
    ("vit.attn", dict(rank=8, alpha=4, rslora=True)),
    ({"vit.attn": 2, "blocks.1.mlp.fc1": {"rank": 5, "alpha": 1.5}}, dict()),
])
def test_vit_round_trip_bit_exact(tmp_path, target, kw):
    vit = _adapted_vit(target, **kw)
    x = images()
    with torch.no_grad():
        expected = vit(x)
    path = vislora.save_adapter(vit, tmp_path / "a.safetensors")

    torch.manual_seed(123)  # a different seed: the loaded values must come from the file
    fresh = tiny_vit()
    report = vislora.load_adapter(fresh, path)
    assert report.format == "vislora" and not report.unmatched
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    again = vislora.save_adapter(fresh, tmp_path / "b.safetensors")
    assert path.read_bytes() == again.read_bytes()


@pytest.mark.parametrize("conv", ["locon", "tucker"])
def test_unet_round_trip_bit_exact(tmp_path, conv):
    unet = tiny_unet()
    vislora.inject(unet, {"unet.attn": 4, "unet.conv": {"rank": 8, "alpha": 4}}, init="random", conv=conv)
    inputs = unet_inputs()
    expected = run_unet(unet, inputs)
    path = vislora.save_adapter(unet, tmp_path / "u.safetensors")
    fresh = tiny_unet()
    vislora.load_adapter(fresh, path)
    assert torch.equal(run_unet(fresh, inputs), expected)
    assert vislora.save_adapter(fresh, tmp_path / "v.safetensors").read_bytes() == path.read_bytes()


def test_file_layout_is_peft_diffusers(tmp_path):
    vit = _adapted_vit("vit.attn", rank=4, alpha=2)
    path = vislora.save_adapter(vit, tmp_path / "a.safetensors", metadata={"note": "hello"})
    tensors = safetensors.torch.load_file(path)  # the reference reader accepts our container
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(header_len))["__metadata__"]
    assert "blocks.0.attn.qkv.lora_A.weight" in tensors
    assert tensors["blocks.0.attn.qkv.lora_B.weight"].shape == (192, 4)
    assert meta["format"] == "pt" and meta["note"] == "hello"
    peft_meta = json.loads(meta["lora_adapter_metadata"])
    assert peft_meta["r"] == 4 and peft_meta["lora_alpha"] == 2.0
    for key, value in tensors.items():
        assert torch.equal(value, vislora.read_adapter(path).modules[key.rsplit(".", 2)[0]].factors[
            "down" if "lora_A" in key else "up"])


def test_qv_slices_saved_as_equivalent_plain_lora(tmp_path):
    vit = _adapted_vit("vit.qv", rank=3)
    path = vislora.save_adapter(vit, tmp_path / "qv.safetensors")
    t = safetensors.torch.load_file(path)
    A, B = t["blocks.0.attn.qkv.lora_A.weight"], t["blocks.0.attn.qkv.lora_B.weight"]
    assert A.shape == (6, 64) and B.shape == (192, 6)
    slot = vit.blocks[0].attn.qkv.adapters["default"]
    torch.testing.assert_close(B @ A * slot.scale, slot.delta_weight(), rtol=0, atol=0)


def test_pipeline_round_trip_with_prefixes(tmp_path):
    pipe = tiny_pipeline()
    vislora.inject(pipe, ["unet.attn", "unet.conv", "text.attn"], rank=2, init="random")
    path = vislora.save_adapter(pipe, tmp_path / "p.safetensors")
    keys = safetensors.torch.load_file(path).keys()
    assert all(k.startswith(("unet.", "text_encoder.")) for k in keys)
    inputs = unet_inputs()
    expected = run_unet(pipe.unet, inputs)
    fresh = tiny_pipeline()
    report = vislora.load_adapter(fresh, path)
    assert not report.unmatched
    assert torch.equal(run_unet(fresh.unet, inputs), expected)
    # The same file also loads onto the bare UNet, with strict=False: the text encoder's modules are reported
    # unmatched (strict, the default, refuses and lists them).
    bare = tiny_unet()
    with pytest.raises(AdapterCompatError, match="text_encoder"):
        vislora.load_adapter(bare, path)
    with pytest.warns(AdapterWarning, match="match nothing"):
        report = vislora.load_adapter(bare, path, strict=False)
    assert report.unmatched and all(u.startswith("text_encoder.") for u in report.unmatched)
    assert torch.equal(run_unet(bare, inputs), expected)


def test_partial_match_warns_and_strict_refuses(tmp_path):
    vit = _adapted_vit("vit.all", rank=2)
    path = vislora.save_adapter(vit, tmp_path / "a.safetensors")
    one_block = tiny_vit(depth=1)
    before = checksum(one_block)
    with pytest.raises(AdapterCompatError, match="strict=False"):
        vislora.load_adapter(one_block, path)  # strict by default
    assert checksum(one_block) == before
    with pytest.warns(AdapterWarning, match="4 of 8"):
        report = vislora.load_adapter(one_block, path, strict=False)
    assert len(report.matched) == 4 and len(report.unmatched) == 4


def test_nothing_matches_is_an_error(tmp_path):
    unet = tiny_unet()
    vislora.inject(unet, "unet.attn", rank=2)
    path = vislora.save_adapter(unet, tmp_path / "u.safetensors")
    vit = tiny_vit()
    before = checksum(vit)
    with pytest.raises(AdapterCompatError, match="no-match"):
        vislora.load_adapter(vit, path)
    assert checksum(vit) == before


def test_shape_mismatch_lists_keys_and_names_architectures(tmp_path):
    unet = tiny_unet(cross_dim=24)
    vislora.inject(unet, "unet.cross_attn", rank=2)
    path = vislora.save_adapter(unet, tmp_path / "u.safetensors")
    other = tiny_unet(cross_dim=32)
    before = checksum(other)
    with pytest.raises(AdapterCompatError, match=r"attn2.to_k \[down\]: model needs \(2, 32\), file has \(2, 24\)"):
        vislora.load_adapter(other, path)
    assert checksum(other) == before
    assert not any(isinstance(m, vislora.AdapterLayer) for m in other.modules())


def test_wrong_base_architecture_is_named(tmp_path):
    from vislora.formats import container

    # An SDXL-shaped cross-attention key (2048 wide) against an SD1-shaped (768) model.
    from torch import nn

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_k = nn.Linear(768, 320, bias=False)

    model = nn.Module()
    model.attn2 = Attn()
    container.write(tmp_path / "x.safetensors", {
        "attn2.to_k.lora_A.weight": torch.zeros(4, 2048), "attn2.to_k.lora_B.weight": torch.zeros(320, 4)})
    with pytest.raises(AdapterCompatError, match="made for SDXL; this model is SD1.x"):
        vislora.load_adapter(model, tmp_path / "x.safetensors")


def test_modules_to_save_round_trip_and_class_count_mismatch(tmp_path):
    vit = tiny_vit(num_classes=5)
    vislora.inject(vit, "vit.attn", rank=2, init="random", modules_to_save=["head"])
    with torch.no_grad():
        vit.head.weight.normal_()
        expected = vit(images())
    path = vislora.save_adapter(vit, tmp_path / "h.safetensors", metadata={"classes": json.dumps(list("abcde"))})
    fresh = tiny_vit(num_classes=5)
    report = vislora.load_adapter(fresh, path)
    assert set(report.extra) == {"head.weight", "head.bias"}
    assert json.loads(report.metadata["classes"]) == list("abcde")
    with torch.no_grad():
        assert torch.equal(fresh(images()), expected)
    wrong = tiny_vit(num_classes=7)
    before = checksum(wrong)
    with pytest.raises(AdapterCompatError, match="number of classes"):
        vislora.load_adapter(wrong, path)
    assert checksum(wrong) == before


def test_loaded_adapter_is_frozen_unless_trainable(tmp_path):
    vit = _adapted_vit("vit.attn", rank=2)
    path = vislora.save_adapter(vit, tmp_path / "a.safetensors")
    a = tiny_vit()
    vislora.load_adapter(a, path)
    assert not any(p.requires_grad for n, p in a.named_parameters() if ".adapters." in n)
    b = tiny_vit()
    vislora.load_adapter(b, path, trainable=True)
    names = {n for n, p in b.named_parameters() if p.requires_grad}
    assert names and all(".adapters." in n for n in names)


def test_load_with_strength_and_blend_two_files(tmp_path):
    x = images()
    a, b = _adapted_vit("vit.all", rank=2), _adapted_vit("vit.attn", rank=4)
    pa = vislora.save_adapter(a, tmp_path / "a.safetensors")
    pb = vislora.save_adapter(b, tmp_path / "b.safetensors")
    model = tiny_vit()
    vislora.load_adapter(model, pa, name="a", strength=0.5)
    vislora.load_adapter(model, pb, name="b", strength=0.25)
    layer = model.blocks[0].attn.qkv
    assert layer.adapters["a"].strength == 0.5 and layer.adapters["b"].strength == 0.25
    with torch.no_grad():
        blended = model(x)
        vislora.merge(model)
        torch.testing.assert_close(model(x), blended, rtol=1e-5, atol=1e-5)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    vit = _adapted_vit("vit.attn", rank=2)
    target = tmp_path / "out" / "a.safetensors"
    vislora.save_adapter(vit, target)
    vislora.save_adapter(vit, target)  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.safetensors"]


def test_save_unknown_name_errors(tmp_path):
    vit = _adapted_vit("vit.attn", rank=2)
    with pytest.raises(vislora.AdapterStateError):
        vislora.save_adapter(vit, tmp_path / "x.safetensors", name="nope")

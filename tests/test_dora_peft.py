"""PEFT's DoRA (lora_magnitude_vector) read and written exactly: PEFT's own outputs on a timm ViT, Linear and
conv (patch embedding) modules."""

from __future__ import annotations

import pytest
import torch

import vislora
from conftest import images, tiny_vit
from vislora.tools import common

peft = pytest.importorskip("peft")


def _peft_dora_folder(tmp_path):
    model = tiny_vit()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1", "proj"], use_dora=True,
                             init_lora_weights=False)
    theirs = peft.get_peft_model(model, config)
    with torch.no_grad():  # magnitudes away from the weight norms, so DoRA does something of its own
        for name, p in theirs.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.3 * torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))))
    theirs.save_pretrained(tmp_path / "peft_dora")
    return theirs.eval(), tmp_path / "peft_dora"


def test_we_read_peft_dora_exactly(tmp_path):
    theirs, folder = _peft_dora_folder(tmp_path)
    x = images()
    with torch.no_grad():
        want = theirs(x)
        base = tiny_vit()(x)
    assert (want - base).abs().max() > 1e-3
    ours = tiny_vit()
    report = vislora.load_adapter(ours, folder)
    assert report.matched and any(".patch_embed.proj" in m or m == "patch_embed.proj" for m in report.matched)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)
        vislora.merge(ours)
        torch.testing.assert_close(ours(x), want, rtol=1e-4, atol=1e-5)


def test_peft_reads_our_dora_folder_and_lycoris_layout_keeps_it(tmp_path):
    theirs, folder = _peft_dora_folder(tmp_path)
    x = images()
    with torch.no_grad():
        want = theirs(x)
    adapter = common.read(folder)
    common.write(tmp_path / "again", adapter, "peft")
    back = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), want, rtol=1e-5, atol=1e-5)
    common.write(tmp_path / "ly.safetensors", adapter, "lycoris")  # dora_scale [out, 1(, 1, 1)]
    ours = tiny_vit()
    vislora.load_adapter(ours, tmp_path / "ly.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)

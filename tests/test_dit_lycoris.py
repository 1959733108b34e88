"""LyCORIS kinds on diffusion transformers: LyCORIS' own network (lycoris-lora's `create_lycoris`, as SimpleTuner
uses it) on a tiny config-built Flux.1 transformer writes a `lycoris_` file; vislora loads it with LyCORIS'
output, and writes it back (--to lycoris) with the same tensors, bit for bit. kohya's original names fuse q, k
and v: LoRA fuses there, other kinds are refused with the way out."""

from __future__ import annotations

import pytest
import torch

import vislora
from dit_models import run, tiny
from vislora.formats import container, kohya

wrapper = pytest.importorskip("lycoris.wrapper")

# LoKr at rank 1 with factor 4: its w2 is low rank (w2_a @ w2_b) on the 16-wide layers, so alpha counts
KINDS = {"lora": dict(algo="lora"), "loha": dict(algo="loha"), "lokr": dict(algo="lokr", factor=4, linear_dim=1),
         "dora": dict(algo="lora", dora_wd=True)}


def _lycoris_file(tmp_path, kind: str):
    """LyCORIS' network on every Linear of a tiny Flux.1, its factors random (LyCORIS starts at zero), applied
    to the model: (the model's output with it, the file it saves)."""
    model = tiny("Flux.1")
    net = wrapper.create_lycoris(model, 1.0, linear_alpha=3, preset="full", **{"linear_dim": 2, **KINDS[kind]})
    net.apply_to()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("dora_scale"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    out = run(model, "Flux.1")
    path = tmp_path / f"{kind}.safetensors"
    net.save_weights(str(path), None, {})
    return out, path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lycoris_network_file_loads_with_its_output_and_writes_back_bit_exactly(tmp_path, kind):
    want, path = _lycoris_file(tmp_path, kind)
    assert (want - run(tiny("Flux.1"), "Flux.1")).abs().max() > 1e-3
    tensors, meta = container.read(path)
    assert "lycoris_transformer_blocks_0_attn_to_q.alpha" in tensors
    fresh = tiny("Flux.1")
    report = vislora.load_adapter(fresh, path)
    assert not report.unmatched and report.format == "kohya"
    torch.testing.assert_close(run(fresh, "Flux.1"), want, rtol=1e-5, atol=5e-5)  # outputs ~3, 50 modules
    # the file's tensors, read and written again; and written from the loaded model (diffusers paths)
    again, _ = kohya.write(kohya.read(tensors, meta, str(path)), dit_naming="lycoris")
    saved, _ = container.read(vislora.save_adapter(fresh, tmp_path / "ours.safetensors", format="lycoris"))
    for ours in (again, saved):
        assert ours.keys() == tensors.keys()
        for k in tensors:
            assert torch.equal(ours[k], tensors[k].to(ours[k].dtype)), k


def test_kohya_names_fuse_lora_and_refuse_other_kinds_on_fused_layers(tmp_path):
    model = tiny("Flux.1")
    vislora.inject(model, "transformer.attn", linear="loha", rank=2, init="random")
    with pytest.raises(ValueError, match="--to lycoris"):
        vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya")
    out = run(model, "Flux.1")
    path = vislora.save_adapter(model, tmp_path / "ly.safetensors", format="lycoris")
    assert "lycoris_transformer_blocks_1_attn_add_k_proj.hada_w1_a" in container.read(path)[0]
    fresh = tiny("Flux.1")
    vislora.load_adapter(fresh, path)
    assert (run(fresh, "Flux.1") - out).abs().max() < 1e-5

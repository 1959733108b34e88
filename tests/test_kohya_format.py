"""kohya / LyCORIS files: every kind read, written and read again tensor-exact; loaded exactly as LyCORIS'
own math and diffusers' load_lora_weights apply them; strict matching, base-model refusal, bad files."""

from __future__ import annotations

import pytest
import torch

from kohya_files import CONV_KINDS, LINEAR_KINDS, module_parts, with_dora
from vislora.formats import container, kohya

LINEAR, CONV = (32, 768), (32, 32, 3, 3)


def _kohya_tensors(kinds_linear, kinds_conv, dora=None):
    tensors = {}
    for i, kind in enumerate(kinds_linear):
        parts = module_parts(kind, LINEAR)
        if dora:
            parts = with_dora(parts, torch.randn(LINEAR), dora)
        tensors.update({f"lora_unet_down_blocks_0_attentions_{i}_transformer_blocks_0_attn2_to_k.{p}": t
                        for p, t in parts.items()})
    for i, kind in enumerate(kinds_conv):
        parts = module_parts(kind, CONV)
        if dora:
            parts = with_dora(parts, torch.randn(CONV), dora)
        tensors.update({f"lora_unet_down_blocks_0_resnets_{i}_conv1.{p}": t for p, t in parts.items()})
    return tensors


@pytest.mark.parametrize("dora", [None, "out", "in"])
def test_every_kind_round_trips_tensor_exact(dora):
    tensors = _kohya_tensors(LINEAR_KINDS, CONV_KINDS, dora)
    first = kohya.read(tensors, {}, "f")
    kinds = {w.kind for w in first.modules.values()}
    assert kinds == {"lora", "locon", "tucker", "loha", "lokr", "full"}
    written, meta = kohya.write(first)
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["ss_base_model_version"] == "sd_v1"
    again = kohya.read(*container.parse(container.serialize(written, meta), "g"), "g")
    assert set(written) == set(tensors)  # the same names and parts
    for name, w in first.modules.items():
        v = again.modules[name]
        assert (v.kind, v.rank, v.alpha) == (w.kind, w.rank, w.alpha)
        assert set(v.factors) == set(w.factors)
        for f in w.factors:
            assert torch.equal(v.factors[f], w.factors[f]), (name, f)
        if dora:
            assert torch.equal(v.magnitude, w.magnitude)


def test_lokr_with_whole_factors_has_scale_one():
    parts = module_parts("lokr_full", LINEAR)
    w = kohya.read({f"lora_unet_x.{p}": t for p, t in parts.items()}, {}, "f").modules["lora_unet_x"]
    assert w.scale == 1.0 and float(parts["alpha"]) == 8.0


def test_missing_alpha_means_scale_one_and_alpha_written_positive():
    parts = module_parts("lora", LINEAR)
    del parts["alpha"]
    f = kohya.read({f"lora_unet_x.{p}": t for p, t in parts.items()}, {}, "f")
    assert f.modules["lora_unet_x"].scale == 1.0
    written, _ = kohya.write(f)
    assert written["lora_unet_x.alpha"].dim() == 0 and float(written["lora_unet_x.alpha"]) == 4.0


def test_sshs_hashes_match_kohyas_definition_over_the_written_file(tmp_path, capsys):
    """kohya's precalculate_safetensors_hashes: S = safetensors.torch.save(tensors, ss_* metadata); model hash =
    sha256 of S after its header, legacy = sha256(S[1 MiB : 1 MiB + 64 KiB])[:8]. Recomputed here with the
    safetensors library from what the file holds; the file is > 1.1 MiB so the legacy window is not empty,
    and mixes fp16 and fp32 so the tensor order matters."""
    import hashlib
    import struct

    import safetensors.torch

    from vislora import cli, formats

    g = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_a.lora_down.weight": torch.randn(16, 16000, generator=g),
               "lora_unet_a.lora_up.weight": torch.randn(64, 16, generator=g), "lora_unet_a.alpha": torch.tensor(8.0),
               "lora_unet_b.lora_down.weight": torch.randn(8, 16000, generator=g).half(),
               "lora_unet_b.lora_up.weight": torch.randn(64, 8, generator=g).half()}
    path = formats.write(tmp_path / "a.safetensors", kohya.read(tensors, {}, "f"), format="kohya")
    data = path.read_bytes()
    assert len(data) > 0x110000
    (n,) = struct.unpack("<Q", data[:8])
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    reference = safetensors.torch.save(stored, {k: v for k, v in meta.items() if k.startswith("ss_")})
    (m,) = struct.unpack("<Q", reference[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(reference[8 + m:]).hexdigest() == hashlib.sha256(
        data[8 + n:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    assert meta["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]  # the window held data
    assert cli.main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert meta["sshs_model_hash"] in shown and meta["sshs_legacy_hash"] in shown


@pytest.mark.parametrize("part,category", [("oft_blocks", "unsupported-kind"), ("on_input", "unsupported-kind")])
def test_other_lycoris_algorithms_are_refused_by_name(part, category):
    from vislora import AdapterFormatError

    with pytest.raises(AdapterFormatError, match="OFT|IA3") as e:
        kohya.read({f"lora_unet_x.{part}": torch.ones(2, 2)}, {}, "f.safetensors")
    assert e.value.category == category and "f.safetensors" in str(e.value)


def test_incomplete_and_mixed_modules_are_refused():
    from vislora import AdapterFormatError

    with pytest.raises(AdapterFormatError, match="incomplete"):
        kohya.read({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, {}, "f")
    with pytest.raises(AdapterFormatError, match="kinds"):
        kohya.read({"lora_unet_x.lora_down.weight": torch.ones(2, 2), "lora_unet_x.lora_up.weight": torch.ones(2, 2),
                    "lora_unet_x.hada_w1_a": torch.ones(2, 2)}, {}, "f")
    with pytest.raises(AdapterFormatError, match="not kohya"):
        kohya.read({"lora_unet_x.lora_down.weight": torch.ones(2, 2), "lora_unet_x.lora_up.weight": torch.ones(2, 2),
                    "unet.y.lora_A.weight": torch.ones(2, 2)}, {}, "f")

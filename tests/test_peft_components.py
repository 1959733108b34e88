"""A pipeline adapter as PEFT folders, one per component (OUT/unet/, OUT/text_encoder/, as PEFT's DreamBooth
example saves them and `save_adapter(..., format="peft")` writes them), loads back as one adapter: exact
outputs, identical files on a second write, and strict errors that name the file concerned."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import vislora
from conftest import checksum, tiny_pipeline, tokens, unet_inputs
from vislora import AdapterCompatError, AdapterFormatError, UnsafeFormatError, cli
from vislora.formats import container

TARGETS = {"unet.attn": {"rank": 4, "alpha": 2}, "unet.conv": {"rank": 2, "alpha": 3},
           "text.attn": {"rank": 4, "alpha": 8}}
FILES = ("adapter_model.safetensors", "adapter_config.json")


def _outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return pipe.unet(**unet_inputs()).sample, pipe.text_encoder(tokens(length=8)).last_hidden_state


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(folder written from a random adapter on a tiny pipeline, that pipeline's outputs with the adapter)."""
    pipe = tiny_pipeline()
    base = _outputs(pipe)
    vislora.inject(pipe, TARGETS, init="random")
    adapted = _outputs(pipe)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(adapted, base))  # the adapter changes both parts
    out = vislora.save_adapter(pipe, tmp_path_factory.mktemp("peft") / "out", format="peft")
    return out, adapted


def test_per_component_folders_read_back_as_one_adapter(written, tmp_path):
    out, adapted = written
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        ["text_encoder", "unet"] + [f"{c}/{f}" for c in ("text_encoder", "unet") for f in FILES])
    pipe = tiny_pipeline()
    report = vislora.load_adapter(pipe, out, "again")
    first = vislora.read_adapter(out)
    assert {n.partition(".")[0] for n in report.matched} == {"unet", "text_encoder"} and not report.unmatched
    assert len(report.matched) == len(first.modules) > 0
    for got, want in zip(_outputs(pipe), adapted):
        assert torch.equal(got, want)
    again = vislora.save_adapter(pipe, tmp_path / "again", "again", format="peft")
    second = vislora.read_adapter(again)
    assert {n: (w.rank, w.alpha) for n, w in first.modules.items()} == {
        n: (w.rank, w.alpha) for n, w in second.modules.items()}
    assert {w.rank for w in first.modules.values()} == {2, 4}  # rank_pattern exercised
    for comp in ("unet", "text_encoder"):
        a, b = container.read(out / comp / FILES[0])[0], container.read(again / comp / FILES[0])[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert json.loads((out / comp / FILES[1]).read_text()) == json.loads((again / comp / FILES[1]).read_text())


def test_convert_to_peft_and_back_keeps_every_tensor(written, tmp_path):
    out, _ = written
    assert cli.main(["convert", str(out), str(tmp_path / "one.safetensors"), "--to", "diffusers"]) == 0
    assert cli.main(["convert", str(tmp_path / "one.safetensors"), str(tmp_path / "back"), "--to", "peft"]) == 0
    for comp in ("unet", "text_encoder"):
        a, b = container.read(out / comp / FILES[0])[0], container.read(tmp_path / "back" / comp / FILES[0])[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _copy(out, tmp_path):
    return shutil.copytree(out, tmp_path / "copy")


def test_unknown_subfolder_is_an_error_naming_it(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    shutil.copytree(folder / "unet", folder / "vae")
    with pytest.raises(AdapterFormatError, match="vae") as e:
        vislora.read_adapter(folder)
    assert e.value.category == "unknown-component" and e.value.path.endswith("vae")


def test_a_module_matching_nothing_names_its_file_and_changes_nothing(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    file = folder / "text_encoder" / FILES[0]
    tensors, meta = container.read(file)
    tensors["base_model.model.text_model.encoder.layers.7.self_attn.q_proj.lora_A.weight"] = torch.ones(4, 24)
    tensors["base_model.model.text_model.encoder.layers.7.self_attn.q_proj.lora_B.weight"] = torch.ones(24, 4)
    container.write(file, tensors, meta)
    pipe = tiny_pipeline()
    before = checksum(pipe.unet), checksum(pipe.text_encoder)
    with pytest.raises(AdapterCompatError, match="layers.7") as e:
        vislora.load_adapter(pipe, folder)
    assert e.value.path == str(file) and e.value.category == "unmatched"
    assert (checksum(pipe.unet), checksum(pipe.text_encoder)) == before
    tensors["base_model.model.text_model.stray"] = torch.ones(2)
    container.write(file, tensors, meta)
    with pytest.raises(AdapterFormatError, match="stray") as e:
        vislora.read_adapter(folder)
    assert e.value.path == str(file)


def test_a_pickled_component_is_refused(written, tmp_path):
    folder = _copy(written[0], tmp_path)
    (folder / "text_encoder" / FILES[0]).unlink()
    (folder / "text_encoder" / "adapter_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeFormatError, match="safetensors"):
        vislora.read_adapter(folder)

"""Bases where users have them, on real weights and offline.

Single files, as A1111 and ComfyUI users have them: one original-layout (LDM) .safetensors checkpoint, loaded
through diffusers' from_single_file with a local folder for the configs; tests/ldm_checkpoint.py writes them
from the shipped digits base. Hub ids: the digits base placed in a Hugging Face cache folder, read offline
through the same calls that download it online."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_checkpoint import write_ldm_checkpoint
from PIL import Image
from sd_tiny import save_pipeline, save_sdxl_pipeline

import vislora
from vislora.cli import main as cli
from vislora.formats import container
from vislora.recipes import dreambooth_sd
from vislora.diffusion.bases import BaseModelError, load_pipeline
from vislora.diffusion.pipeline import generate
from vislora.diffusion.generate import Source
from vislora.basics import sha256_file

DIGITS = Path(__file__).resolve().parents[1] / "samples" / "digits_sd"


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> Path:
    if not (DIGITS / "model_index.json").is_file():
        pytest.skip("samples/digits_sd is not there")
    return write_ldm_checkpoint(load_pipeline(str(DIGITS)).pipe, tmp_path_factory.mktemp("ldm") / "digits.safetensors")


def test_the_checkpoint_is_in_the_original_layout(digits_file):
    """What A1111 reads: the three models under their LDM prefixes, with LDM names inside."""
    from safetensors import safe_open

    with safe_open(str(digits_file), "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
            "model.diffusion_model.out.2.weight", "first_stage_model.decoder.up.0.block.0.conv1.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight"} <= keys
    assert not any(".down_blocks." in k or ".resnets." in k for k in keys)


def _same_models_and_pixels(folder, single, parts: tuple[str, ...], prompt: str) -> None:
    """Every tensor of every model equal, and the same image from the same seed."""
    for part in parts:
        ours, theirs = getattr(folder, part).state_dict(), getattr(single, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part
    drawn = [np.asarray(generate(p, [prompt], [0], steps=3, guidance=5, size=32)[0]) for p in (folder, single)]
    assert np.array_equal(*drawn)


def test_a_single_file_loads_as_its_folder_does(digits_file):
    folder, single = load_pipeline(str(DIGITS)), load_pipeline(str(digits_file), config=str(DIGITS))
    assert single.record == {"source": "file", "path": str(digits_file.resolve()), "sha256": sha256_file(digits_file),
                             "config": str(DIGITS), "arch": "custom", "prediction": "epsilon",
                             "pipeline": "StableDiffusionPipeline"}
    _same_models_and_pixels(folder.pipe, single.pipe, ("unet", "vae", "text_encoder"), "a handwritten digit four")


def test_an_sdxl_single_file_loads_as_its_folder_does(tmp_path):
    """Both text encoders (the second from OpenCLIP names with fused q/k/v) and the micro-conditioned UNet."""
    folder_path = save_sdxl_pipeline(tmp_path, width2=48)
    folder = load_pipeline(str(folder_path))
    file = write_ldm_checkpoint(folder.pipe, tmp_path / "sdxl.safetensors")
    single = load_pipeline(str(file), config=str(folder_path))
    assert single.arch == "sdxl" and single.record["pipeline"] == "StableDiffusionXLPipeline"
    _same_models_and_pixels(folder.pipe, single.pipe, ("unet", "vae", "text_encoder", "text_encoder_2"), "a digit")


def test_generate_draws_the_same_png_from_the_file(digits_file, tmp_path):
    common = ["--prompt", "a handwritten digit two", "--steps", "3", "--n", "2"]
    assert cli(["generate", "--model", str(DIGITS), *common, "--out", str(tmp_path / "folder.png")]) == 0
    assert cli(["generate", "--model", str(digits_file), "--model-config", str(DIGITS), *common,
                "--out", str(tmp_path / "file.png")]) == 0
    folder, file = Image.open(tmp_path / "folder.png"), Image.open(tmp_path / "file.png")
    assert np.array_equal(np.asarray(folder), np.asarray(file))
    assert json.loads(file.text["vislora"])["model_config"] == str(DIGITS)


def test_dreambooth_trains_on_a_single_file_and_records_it(tmp_path):
    base = save_pipeline(tmp_path)
    file = write_ldm_checkpoint(load_pipeline(str(base)).pipe, tmp_path / "tiny.safetensors")
    data = tmp_path / "instance"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    assert dreambooth_sd.main(["--model", str(file), "--model-config", str(base), "--instance-data", str(data),
                               "--instance-prompt", "a sks digit", "--out", str(out), "--threads", "1",
                               "--no-progress", "--sample-steps", "2", "--validation-seeds", "0",
                               "--steps", "2"]) == 0
    _, meta = container.read(out / "adapter.safetensors")
    recorded = json.loads(meta[dreambooth_sd.METADATA_KEY])["base"]
    assert recorded["source"] == "file" and recorded["sha256"] == sha256_file(file)
    assert recorded["path"] == "../tiny.safetensors" and recorded["config"] == "../base"
    assert str(tmp_path) not in json.dumps(meta)  # no absolute path (a home folder, the data) in a shared file


def test_offline_without_configs_is_one_clear_error(digits_file, tmp_path, monkeypatch, capsys):
    """diffusers fetches a single file's configs from the hub; offline, the user is told to pass --model-config."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BaseModelError, match=r"digits\.safetensors.*--model-config"):
        load_pipeline(str(digits_file))
    out = tmp_path / "x.png"
    assert cli(["generate", "--model", str(digits_file), "--prompt", "a handwritten digit two", "--out", str(out)]) == 2
    assert "--model-config" in capsys.readouterr().err and not out.exists()


def test_the_studio_opens_a_single_file_and_exports_what_redraws_it(digits_file, tmp_path, monkeypatch):
    """The page on a single file: its exported command and snippet carry --model-config and draw the same pixels."""
    import shlex

    from vislora.studio import export
    from vislora.studio.mix import Request
    from vislora.studio.state import Studio

    (tmp_path / "adapters").mkdir()
    studio = Studio(digits_file, tmp_path / "adapters", tmp_path / "out", model_config=str(DIGITS))
    request = Request("a handwritten digit five", steps=3)
    shown = np.asarray(studio.render(request).image.convert("RGB"))
    assert studio.source == Source(str(digits_file), str(DIGITS))
    words = shlex.split(export.command(request, studio.source, tmp_path / "adapters", [], {},
                                       out=str(tmp_path / "cli.png")))
    assert words[words.index("--model-config") + 1] == str(DIGITS)
    assert cli(words[1:]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png").convert("RGB")), shown)
    monkeypatch.chdir(tmp_path)
    exec(export.snippet(request, studio.source, tmp_path / "adapters", [], {}, {}), {})
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")), shown)


def test_loading_a_single_file_says_nothing_a_user_cannot_act_on(digits_file):
    """diffusers' "should be kept in float32: []" on every single-file load is not shown (bases are float32)."""
    import logging

    logger, seen = logging.getLogger("diffusers.models.modeling_utils"), []
    catch = logging.Handler(logging.WARNING)
    catch.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(catch)
    try:
        load_pipeline(str(digits_file), config=str(DIGITS))
        load_pipeline(str(DIGITS)).pipe.unet.to(torch.float32)  # the handler sees the warning where it is not dropped
    finally:
        logger.removeHandler(catch)
    assert len(seen) == 1 and "should be kept in float32" in seen[0]
    assert not [f for f in logger.filters if "Fp32" in type(f).__name__]  # dropped for the single-file load only


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache holding the digits base as `vislora/digits-sd` at COMMIT."""
    import huggingface_hub.constants

    if not (DIGITS / "model_index.json").is_file():
        pytest.skip("samples/digits_sd is not there")
    repo = tmp_path / "hub" / "models--vislora--digits-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(DIGITS, repo / "snapshots" / COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo / "snapshots" / COMMIT


def test_a_hub_id_loads_and_records_its_commit(hub_cache):
    hub = load_pipeline("vislora/digits-sd")
    assert hub.record == {"source": "hub", "name": "vislora/digits-sd", "commit": COMMIT, "arch": "custom",
                          "prediction": "epsilon", "pipeline": "StableDiffusionPipeline"}
    _same_models_and_pixels(load_pipeline(str(DIGITS)).pipe, hub.pipe, ("unet", "vae", "text_encoder"),
                            "a handwritten digit one")


def test_revision_picks_the_commit_and_the_adapter_records_it(hub_cache, tmp_path):
    """--revision OTHER loads that snapshot (here its UNet differs) and DreamBooth records OTHER in the file."""
    from safetensors.torch import load_file, save_file

    other = "fedcba9876543210fedcba9876543210fedcba98"
    shutil.copytree(hub_cache, hub_cache.parent / other)
    weights = hub_cache.parent / other / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 1 if k == "conv_in.bias" else v for k, v in load_file(str(weights)).items()}, str(weights))
    main, pinned = load_pipeline("vislora/digits-sd"), load_pipeline("vislora/digits-sd", revision=other)
    assert (main.record["commit"], pinned.record["commit"]) == (COMMIT, other)
    shift = pinned.pipe.unet.conv_in.bias - main.pipe.unet.conv_in.bias
    assert torch.allclose(shift, torch.ones_like(shift), atol=1e-3)  # the file is fp16: +1 rounds
    data = tmp_path / "instance"
    data.mkdir()
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(data / "0.png")
    out = tmp_path / "run"
    assert dreambooth_sd.main(["--model", "vislora/digits-sd", "--revision", other, "--instance-data", str(data),
                               "--instance-prompt", "a sks digit", "--out", str(out), "--threads", "1",
                               "--no-progress", "--sample-steps", "2", "--validation-seeds", "0",
                               "--steps", "1"]) == 0
    _, meta = container.read(out / "adapter.safetensors")
    assert json.loads(meta[dreambooth_sd.METADATA_KEY])["base"] == {
        "source": "hub", "name": "vislora/digits-sd", "commit": other, "arch": "custom", "prediction": "epsilon",
        "pipeline": "StableDiffusionPipeline"}
    with pytest.raises(BaseModelError, match=r"--revision main: .*--model .*digits_sd is a local folder"):
        load_pipeline(str(DIGITS), revision="main")


def test_a_hub_repo_with_pickled_weights_or_none_is_one_clear_error(hub_cache):
    unet = hub_cache / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"PK\x03\x04" + b"\0" * 100)  # torch.save's zip
    with pytest.raises(vislora.UnsafeFormatError, match=r"unet/diffusion_pytorch_model\.bin"):
        load_pipeline("vislora/digits-sd")
    with pytest.raises(BaseModelError, match=r"--model vislora/elsewhere: .*hub id does not load") as e:
        load_pipeline("vislora/elsewhere")
    assert "stacktrace" not in str(e.value)


def test_images_from_a_hub_id_record_the_commit_they_were_drawn_with(hub_cache, tmp_path):
    """--revision left at main is written as the commit main resolved to (by generate and by the studio's
    exports), so the settings load the same weights after the branch moves on."""
    import shlex

    from vislora.studio import export
    from vislora.studio.mix import Request
    from vislora.studio.state import Studio

    out = tmp_path / "hub.png"
    assert cli(["generate", "--model", "vislora/digits-sd", "--prompt", "a handwritten digit two", "--steps", "3",
                "--out", str(out)]) == 0
    assert json.loads(Image.open(out).text["vislora"])["revision"] == COMMIT
    (tmp_path / "adapters").mkdir()
    studio = Studio("vislora/digits-sd", tmp_path / "adapters", tmp_path / "out")
    assert studio.source == Source("vislora/digits-sd", None, COMMIT)
    request = Request("a handwritten digit two", steps=3)
    shown = np.asarray(studio.render(request).image.convert("RGB"))
    words = shlex.split(export.command(request, studio.source, tmp_path / "adapters", [], {},
                                       out=str(tmp_path / "again.png")))
    assert words[words.index("--revision") + 1] == COMMIT
    assert cli(words[1:]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png").convert("RGB")), shown)
    assert f"revision={COMMIT!r}" in export.snippet(request, studio.source, tmp_path / "adapters", [], {}, {})

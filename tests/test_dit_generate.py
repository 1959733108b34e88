"""`vislora generate` and the studio's generation on diffusion-transformer pipelines, unchanged: FluxPipeline,
StableDiffusion3Pipeline, Flux2KleinPipeline and Flux2Pipeline, tiny and config-built, saved as folders
(tests/dit_pipelines.py). An adapter file changes the image; the studio draws the command's pixels; a negative
prompt a pipeline cannot use is refused, not ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vislora.cli import main as cli

from dit_pipelines import BUILDERS, save, strong_adapter
from test_bank import one_thread  # noqa: F401  (autouse: one thread for tiny models)

PIPELINES = list(BUILDERS)


@pytest.fixture(scope="module", params=PIPELINES)
def base(request, tmp_path_factory):
    """(pipeline class name, its folder, a kohya adapter file for it)."""
    from diffusers import DiffusionPipeline

    root = tmp_path_factory.mktemp(request.param)
    folder = save(request.param, root)
    pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True)
    adapter = strong_adapter(pipe, root / "style.safetensors", format="kohya")
    return request.param, folder, adapter


def _draw(folder, out, *extra):
    args = ["generate", "--model", str(folder), "--prompt", "a red digit", "--seed", "0", "--steps", "2",
            "--guidance", "3.5", "--height", "32", "--width", "32", "--out", str(out), *extra]
    assert cli(args) == 0
    from PIL import Image

    image = Image.open(out)
    image.load()
    return image


def test_generate_draws_and_the_adapter_changes_the_image(base, tmp_path):
    cls_name, folder, adapter = base
    plain = _draw(folder, tmp_path / "plain.png")
    mixed = _draw(folder, tmp_path / "mixed.png", "--lora", f"{adapter}:1.0")
    again = _draw(folder, tmp_path / "again.png", "--lora", f"{adapter}:1.0")
    assert plain.size == mixed.size == (32, 32)
    assert mixed.tobytes() == again.tobytes()  # same settings, same pixels
    diff = np.abs(np.asarray(mixed, dtype=float) - np.asarray(plain, dtype=float)).mean()
    assert diff > 1.0, diff
    settings = json.loads(mixed.text["vislora"])
    assert settings["adapters"][0]["strength"] == 1.0 and settings["steps"] == 2
    assert "Sampler: FlowMatchEulerDiscreteScheduler" in mixed.text["parameters"]


def test_a_negative_prompt_is_refused_where_the_pipeline_has_no_use_for_it(base, tmp_path, capsys):
    cls_name, folder, _ = base
    args = ["generate", "--model", str(folder), "--prompt", "a red digit", "--negative-prompt", "blurry",
            "--steps", "1", "--height", "32", "--width", "32", "--out", str(tmp_path / "n.png")]
    code = cli(args)
    if cls_name == "StableDiffusion3Pipeline":
        assert code == 0
    else:
        err = capsys.readouterr().err
        assert code == 2 and "--negative-prompt" in err and "negative prompt; leave it out" in err, err
        assert not (tmp_path / "n.png").exists()


def test_the_studio_draws_the_commands_pixels(base, tmp_path):
    from vislora.studio.mix import Mix, Request
    from vislora.studio.state import Studio

    cls_name, folder, adapter = base
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "style.safetensors").write_bytes(adapter.read_bytes())
    studio = Studio(folder, adapters, tmp_path / "out")
    facts = studio.facts["style.safetensors"]
    assert facts.usable, facts.error
    request = Request("a red digit", seed=0, steps=2, guidance=3.5, width=32, height=32,
                      mixes={"style.safetensors": Mix(True, 1.0)})
    shot = studio.render(request)
    command = _draw(folder, tmp_path / "cmd.png", "--lora", f"{adapter}:1.0")
    assert shot.image.tobytes() == command.tobytes()
    fused = studio.render(Request(**{**request.__dict__, "fused": True}))
    diff = np.abs(np.asarray(fused.image, dtype=float) - np.asarray(command, dtype=float)).max()
    assert diff <= 2, diff  # fused: the same blend folded into the weights (rounding apart)

"""`vislora generate`: mixes, the X/Y grid, settings in the PNG, and bad --lora / --grid arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vislora
from vislora.cli import main as cli
from vislora.diffusion.generate import parse_lora

from conftest import tiny_pipeline
from test_bank import one_thread  # noqa: F401  (autouse: one thread for tiny models)


def _tokenizer(folder):
    """A CLIP tokenizer over single letters (ids below the tiny text model's 99), from local files."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16, pad_token="!")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    pipe = tiny_pipeline()
    pipe.tokenizer = _tokenizer(root)
    pipe.register_modules(tokenizer=pipe.tokenizer)
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    for name, seed in (("bold", 1), ("italic", 2)):
        other = tiny_pipeline()
        torch.manual_seed(seed)
        vislora.inject(other, ["unet.attn", "unet.conv"], rank=2, name=name, init="random")
        (root / name).mkdir()
        vislora.save_adapter(other, root / name / "adapter.safetensors", name)
    return root


def _png(path):
    from PIL import Image

    image = Image.open(path)
    image.load()
    return image


def test_generate_mix_and_settings_in_the_png(model_dir, tmp_path):
    out = tmp_path / "mix.png"
    args = ["generate", "--model", str(model_dir / "pipe"), "--lora", f"{model_dir / 'bold/adapter.safetensors'}:0.7",
            "--lora", f"{model_dir / 'italic/adapter.safetensors'}:0.3", "--prompt", "a digit seven",
            "--seed", "0", "--steps", "2", "--guidance", "5", "--n", "2", "--out", str(out)]
    assert cli(args) == 0
    image = _png(out)
    assert image.size == (2 * 32 + 3 * 4, 32 + 2 * 4)  # two 32x32 samples side by side
    text = image.text["parameters"]
    assert text.startswith("a digit seven <lora:bold:0.7> <lora:italic:0.3>\nSteps: 2, Sampler: DDIMScheduler")
    settings = json.loads(image.text["vislora"])
    assert settings["seed"] == 0 and [a["strength"] for a in settings["adapters"]] == [0.7, 0.3]
    assert (settings["model"], settings["prompt"], settings["steps"], settings["guidance"], settings["n"]) == (
        str(model_dir / "pipe"), "a digit seven", 2, 5.0, 2)
    assert [a["path"] for a in settings["adapters"]] == [str(model_dir / f"{k}/adapter.safetensors") for k in
                                                         ("bold", "italic")]
    assert cli(args[:-1] + [str(tmp_path / "again.png")]) == 0  # same settings, same pixels
    assert _png(tmp_path / "again.png").tobytes() == image.tobytes()


def test_generate_grid_cells_share_the_seed(model_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    bold, italic = model_dir / "bold/adapter.safetensors", model_dir / "italic/adapter.safetensors"
    args = ["generate", "--model", str(model_dir / "pipe"), "--lora", str(bold), "--lora", str(italic),
            "--prompt", "seven", "--steps", "2", "--grid", "bold=0,1", "italic=0,1", "--out", str(out)]
    assert cli(args) == 0
    sheet = _png(out)
    assert json.loads(sheet.text["vislora"])["grid"] == [["bold", [0.0, 1.0]], ["italic", [0.0, 1.0]]]
    # The (0, 0) cell is the base model with the same seed: a plain run gives its pixels.
    plain = tmp_path / "plain.png"
    assert cli(["generate", "--model", str(model_dir / "pipe"), "--prompt", "seven", "--steps", "2",
                "--out", str(plain)]) == 0
    base = _png(plain)
    zoom = (sheet.size[1] - 14 - 4) // 2 // base.size[1]  # cells grow until their labels fit
    base = base.resize((base.size[0] * zoom, base.size[1] * zoom), Image.NEAREST)
    w, h = base.size
    x0, y0 = sheet.size[0] - 2 * (w + 4), 14 + 4  # first image column, first row
    assert sheet.crop((x0, y0, x0 + w, y0 + h)).tobytes() == base.tobytes()
    assert sheet.crop((x0 + w + 4, y0, x0 + 2 * w + 4, y0 + h)).tobytes() != base.tobytes()


def test_bad_lora_and_grid_arguments(model_dir, tmp_path, capsys):
    bold = str(model_dir / "bold/adapter.safetensors")
    with pytest.raises(ValueError, match="no file given"):
        parse_lora(":0.7")
    with pytest.raises(ValueError, match="must be a number"):
        parse_lora(f"{bold}:strong")
    with pytest.raises(ValueError, match="no such file"):
        parse_lora("missing.safetensors:0.5")
    assert parse_lora(bold).name == "bold" and parse_lora(f"b2={bold}:0.25").strength == 0.25
    base = ["generate", "--model", str(model_dir / "pipe"), "--prompt", "x", "--steps", "1", "--out",
            str(tmp_path / "x.png")]
    assert cli(base + ["--lora", f"{bold}:abc"]) == 2
    assert "must be a number" in capsys.readouterr().err
    assert cli(base + ["--lora", bold, "--grid", "italic=0,1"]) == 2
    assert "one of the --lora adapters" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_blend_demo_grid_and_measures(model_dir, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "samples"))
    from demo_blend import blend_grid

    measures = blend_grid(model_dir / "bold/adapter.safetensors", model_dir / "italic/adapter.safetensors",
                          model=model_dir / "pipe", steps=1, values=(0.0, 1.0), digits=(2, 7), out=tmp_path)
    assert set(measures) == {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)}
    assert all(np.isfinite(v).all() for v in measures.values())
    assert measures[0.0, 0.0] != measures[1.0, 1.0]  # the adapters change the images
    text = capsys.readouterr().out
    assert "stroke width (px) / slant (deg)" in text and "italic=1" in text
    sheet = _png(tmp_path / "grid.png")
    assert json.loads(sheet.text["vislora"])["grid"][0] == ["bold", [0.0, 1.0]]
    assert sheet.width >= 2 * 3 * (2 * 32 + 1)  # two cells across, each two drawings side by side, 3x larger


def test_pickled_or_missing_model_is_one_error_line(model_dir, tmp_path, capsys):
    """--model goes through vislora.diffusion.bases.load_pipeline: a pickle is refused by its bytes (never
    unpickled), a missing file is named; each is one `error:` line, exit 2, and no PNG."""
    import pickle

    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": {}}))
    out = tmp_path / "x.png"
    cases = {str(ckpt): "UnsafeFormatError|pickle", str(tmp_path / "missing.ckpt"): "no such file",
             str(tmp_path / "missing.safetensors"): "no such file"}
    for model, words in cases.items():
        assert cli(["generate", "--model", model, "--prompt", "x", "--steps", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert any(w in err for w in words.split("|")), err
    assert not out.exists()


def test_a_model_that_is_not_a_diffusion_model_is_named_so(tmp_path, capsys):
    """The ViT base, an adapter file, or a folder without model_index.json: one line that says it is not a
    diffusion model, before diffusers would guess an architecture and ask the hub for its configs."""
    adapter = tmp_path / "adapter.safetensors"
    empty = tmp_path / "folder"
    empty.mkdir()
    from safetensors.torch import save_file

    save_file({"lora_unet_down.lora_down.weight": torch.zeros(2, 4)}, str(adapter))
    vit = Path(__file__).resolve().parent.parent / "samples" / "digits_base.safetensors"
    cases = {str(empty): "model_index.json", str(adapter): "pass it with --lora"}
    if vit.is_file():
        cases[str(vit)] = "named like 'blocks."
    for model, words in cases.items():
        code = cli(["generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --model {model}: not a diffusion model"), err
        assert words in err and "hub" not in err and len(err.strip().splitlines()) == 1, err


def test_threads_flag(tmp_path, capsys):
    """--threads sets torch's CPU threads before anything loads (as the recipes' --threads does); 0 is refused."""
    before = torch.get_num_threads()
    try:
        cli(["generate", "--model", str(tmp_path / "missing.safetensors"), "--prompt", "x", "--out", "x.png",
             "--threads", "3"])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as e:
        cli(["generate", "--model", "m", "--prompt", "x", "--out", "x.png", "--threads", "0"])
    assert e.value.code == 2 and "1 or more" in capsys.readouterr().err


def test_generate_draws_the_asked_digit_on_the_digits_base(tmp_path, monkeypatch):
    """The command on the shipped digits base: what it draws is read back as the digit asked for."""
    base = Path(__file__).resolve().parents[1] / "samples" / "digits_sd"
    if not (base / "model_index.json").is_file():
        pytest.skip("samples/digits_sd is not there")
    monkeypatch.syspath_prepend(str(base.parent))
    from digit_scorer import classify

    out = tmp_path / "sevens.png"
    assert cli(["generate", "--model", str(base), "--prompt", "a handwritten digit seven", "--n", "4",
                "--steps", "15", "--out", str(out)]) == 0
    sheet = np.asarray(_png(out).convert("RGB"))
    assert sheet.shape == (76, 76, 3)  # 2 x 2 samples of 32 x 32, 4 px apart
    cells = [sheet[4 + 36 * r:36 + 36 * r, 4 + 36 * c:36 + 36 * c] for r in range(2) for c in range(2)]
    assert (classify(np.stack(cells)) == 7).sum() >= 3

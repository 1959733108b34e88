"""One validation step per command: every bad flag value is refused in one line naming the flag, the value and
the fix, exit status 2, before anything is loaded; and no traceback reaches a user (vislora.console)."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislora import checks, cli, console
from vislora.recipes import classify_vit, dreambooth_sd, style_sd

# Loading it fails at once (not a hub id either): a refusal naming another flag proves nothing was loaded.
MISSING_MODEL = "/nonexistent-vislora-model"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write: chmod for a normal user; /proc/1 for root (chmod binds no root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if Path("/proc/1").is_dir() and not os.access("/proc/1", os.W_OK):
        return Path("/proc/1")
    pytest.skip("no read-only folder for root here")


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


# -- the rules themselves ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule, good, bad", [
    (checks.positive(), [1e-4, 3], [0, -1, float("nan"), float("inf"), float("-inf")]),
    (checks.share(), [0, 0.5, 0.999], [1, 5, -0.1, float("nan")]),
    (checks.share(closed=True), [0, 1], [1.01, float("nan")]),
    (checks.number(0, example="7.5"), [0, 7.5], [-1e-9, float("nan"), float("inf")]),
    (checks.count(1), [1, 10**9], [0, -3, 1.5, "2"]),
    (checks.count(0), [0, 4], [-1]),
    (checks.each(checks.count(0)), [[0, 1]], [[0, -1]]),
])
def test_rules_accept_the_good_and_refuse_the_bad(rule, good, bad):
    assert all(rule(v) is None for v in good)
    assert all(rule(v) for v in bad)


def test_check_names_flag_value_and_fix_and_skips_unset():
    checks.check({"lr": None}, {"lr": checks.positive("1e-4")})
    with pytest.raises(checks.UsageError, match=r"^--warm-up 5: must be a finite number >= 0 and < 1 \(e.g. 0.1\)$"):
        checks.check({"warm_up": 5}, {"warm_up": checks.share(example="0.1")})


# -- dreambooth / style ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--lr", "-1"], "--lr -1"), (["--lr", "nan"], "--lr nan"), (["--lr", "inf"], "--lr inf"),
    (["--alpha", "nan"], "--alpha nan"), (["--alpha", "0"], "--alpha 0"),
    (["--noise-offset", "nan"], "--noise-offset nan"), (["--dropout", "2"], "--dropout 2"),
    (["--snr-gamma", "-1"], "--snr-gamma -1"), (["--warmup", "5"], "--warmup 5"), (["--steps", "0"], "--steps 0"),
    (["--resolution", "0"], "--resolution 0"), (["--batch-size", "0"], "--batch-size 0"),
    (["--guidance", "nan"], "--guidance nan"), (["--keep", "0"], "--keep 0"),
])
def test_dreambooth_refuses_each_bad_value_before_loading(tmp_path, capsys, flags, named):
    data = _images(tmp_path / "data")
    out = tmp_path / "out"
    assert dreambooth_sd.main(["--model", MISSING_MODEL, "--instance-data", str(data), "--instance-prompt", "a sks",
                               "--out", str(out), *flags]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {named}"), line  # the flag and the value as given (floats as parsed)
    assert "must be" in line
    assert not out.exists()


def test_out_that_is_a_file_or_read_only_is_refused_before_training(tmp_path, capsys):
    data = _images(tmp_path / "data")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    base = ["--model", MISSING_MODEL, "--instance-data", str(data), "--instance-prompt", "a sks"]
    assert dreambooth_sd.main([*base, "--out", str(a_file)]) == 2
    assert "is a file" in _one_line(capsys)
    assert dreambooth_sd.main([*base, "--out", str(a_file / "below")]) == 2
    assert "is a file, not a folder" in _one_line(capsys)
    locked = _read_only_folder(tmp_path)
    assert dreambooth_sd.main([*base, "--out", str(locked / "run")]) == 2
    assert f"cannot write in {locked}" in _one_line(capsys)


def test_style_refuses_a_caption_file_that_is_not_utf8(tmp_path, capsys):
    data = _images(tmp_path / "data")
    (data / "0.txt").write_text("a digit")
    (data / "1.txt").write_bytes(b"a caf\xe9 digit")  # Latin-1, not UTF-8
    args = ["--model", MISSING_MODEL, "--data", str(data), "--out", str(tmp_path / "out")]
    assert style_sd.main(args) == 2
    line = _one_line(capsys)
    assert "1.txt: not UTF-8 text (byte 0xe9 at offset 5)" in line
    assert style_sd.main([*args, "--caption", "a digit"]) == 2  # --caption: the files are not read
    assert f"--model {MISSING_MODEL}: no such file" in _one_line(capsys)


def test_style_refuses_a_metadata_file_that_is_not_utf8(tmp_path, capsys):
    data = _images(tmp_path / "data")
    (data / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "text": "\xff\xfe"}\n')
    assert style_sd.main(["--model", MISSING_MODEL, "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    assert "metadata.jsonl: not UTF-8 text" in _one_line(capsys)
    (data / "metadata.jsonl").write_text("[" * 100_000 + "\n")  # nesting no parser should recurse into
    assert style_sd.main(["--model", MISSING_MODEL, "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    assert "metadata.jsonl, line 1" in _one_line(capsys)


def test_a_model_folder_with_a_truncated_unet_is_one_line(tmp_path, capsys):
    from sd_tiny import save_pipeline

    base = save_pipeline(tmp_path)
    unet = next((base / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])
    data = _images(tmp_path / "data")
    capsys.readouterr()  # the saving's progress bars
    assert dreambooth_sd.main(["--model", str(base), "--instance-data", str(data), "--instance-prompt", "a sks",
                               "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    line = _one_line(capsys)
    assert f"--model {base}" in line and "damaged or incomplete" in line
    assert cli.main(["generate", "--model", str(base), "--prompt", "x", "--out", str(tmp_path / "a.png")]) == 2
    assert "damaged or incomplete" in _one_line(capsys)


# -- classify ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--rank", "0"], "--rank 0"), (["--batch-size", "0"], "--batch-size 0"), (["--workers", "-1"], "--workers -1"),
    (["--model", "no_such_vit"], "--model no_such_vit"), (["--crop-scale", "2"], "--crop-scale 2"),
    (["--epochs", "0"], "--epochs 0"), (["--max-steps", "0"], "--max-steps 0"), (["--lr", "nan"], "--lr nan"),
    (["--warmup", "5"], "--warmup 5"), (["--dropout", "2"], "--dropout 2"), (["--alpha", "0"], "--alpha 0"),
    (["--val-split", "1"], "--val-split 1"),
])
def test_classify_refuses_each_bad_value_before_loading(tmp_path, capsys, flags, named):
    out = tmp_path / "out"
    assert cli.main(["classify", "--data", str(tmp_path / "no-data-here"), "--out", str(out), *flags]) == 2
    line = _one_line(capsys)  # not "no such folder": the flags are checked before the data is read
    assert line.startswith(f"error: {named}"), line
    assert not out.exists()


@pytest.mark.parametrize("kwargs, problem", [("[1,2]", "must be a JSON object"), ("{depth: 4}", "is not JSON")])
def test_classify_model_kwargs_must_be_a_json_object(tmp_path, capsys, kwargs, problem):
    with pytest.raises(SystemExit) as stop:
        cli.main(["classify", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--model-kwargs", kwargs])
    assert stop.value.code == 2
    line = _one_line(capsys)
    assert "--model-kwargs" in line and problem in line


def test_classify_refuses_a_class_without_a_usable_image(tmp_path, capsys):
    for name in ("cat", "dog"):
        _images(tmp_path / "data" / name)
    (tmp_path / "data" / "bird").mkdir()
    (tmp_path / "data" / "bird" / "notes.txt").write_text("to do: photograph birds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped notes.txt
        assert classify_vit.main(["--data", str(tmp_path / "data"), "--model", "vit_tiny_patch16_224",
                                  "--out", str(tmp_path / "out"), "--no-progress", "--workers", "0"]) == 2
    line = _one_line(capsys)
    assert f"class {tmp_path / 'data' / 'bird'} has no usable image" in line


# -- generate ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, named, fix", [
    (["--n", "0"], "--n 0", "whole number >= 1"),
    (["--guidance", "nan"], "--guidance nan", "finite number >= 0"),
    (["--steps", "0"], "--steps 0", "whole number >= 1"),
    (["--out", "DIR"], "--out", "is a folder; give a file name in it"),
    (["--out", "picture.jpg"], "--out picture.jpg", "must end in .png"),
])
def test_generate_refuses_each_bad_value_before_loading(tmp_path, capsys, flags, named, fix):
    flags = [str(tmp_path) if f == "DIR" else f for f in flags]
    args = ["generate", "--model", MISSING_MODEL, "--prompt", "x", "--out", str(tmp_path / "a.png"), *flags]
    assert cli.main(args) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: {named}") and fix in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_generate_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert cli.main(["generate", "--model", MISSING_MODEL, "--prompt", "x", "--out", str(tmp_path / "a.png"),
                     "--device", "cuda"]) == 2
    assert _one_line(capsys) == "error: --device cuda: no CUDA GPU is available here; use --device cpu"


# -- no traceback reaches a user ---------------------------------------------------------------------------------
def _command_raising(monkeypatch, error: BaseException) -> None:
    def command(argv):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "boom", (command, "raises"))


@pytest.mark.parametrize("error, status, text", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/a/adapter.safetensors"), 1,
     "error: /runs/a/adapter.safetensors: No space left on device (the disk is full: free some space, or write "
     "elsewhere)"),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/a"), 1,
     "error: /runs/a: Permission denied (permission denied: choose a path you can write, or fix its permissions)"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (checks.UsageError("--lr nan: must be a finite number > 0"), 2, "error: --lr nan: must be a finite number > 0"),
    (ZeroDivisionError("division by zero"), 1, "error: internal error (ZeroDivisionError: division by zero); rerun "
     "with `vislora --debug ...` for the traceback, and report it"),
])
def test_every_way_a_command_stops_is_one_line(monkeypatch, capsys, error, status, text):
    _command_raising(monkeypatch, error)
    assert cli.main(["boom"]) == status
    err = capsys.readouterr().err
    assert err == text + "\n"


def test_debug_shows_the_traceback(monkeypatch, capsys):
    _command_raising(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "x"))
    with pytest.raises(OSError, match="No space left"):
        cli.main(["--debug", "boom"])
    assert console.DEBUG_ENV not in os.environ  # the flag does not outlive the command


def test_debug_reaches_a_recipes_own_guard(tmp_path):
    """--debug lets a recipe's refusal through as the exception itself (pytest shows its traceback)."""
    with pytest.raises(checks.UsageError, match="--lr nan"):
        cli.main(["--debug", "classify", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--lr", "nan"])


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    _command_raising(monkeypatch, BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert cli.main(["boom"]) == console.BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    """`vislora inspect FILE | <a reader that has closed>`: no BrokenPipeError, not even at Python's exit."""
    from vislora.formats import container

    g = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    container.write(tmp_path / "a.safetensors", {f"{name}.lora_down.weight": torch.randn(4, 32, generator=g),
                                                 f"{name}.lora_up.weight": torch.randn(32, 4, generator=g),
                                                 f"{name}.alpha": torch.tensor(4.0)}, {})
    command = [sys.executable, "-c", "import sys; from vislora.cli import main; sys.exit(main())", "inspect",
               str(tmp_path / "a.safetensors")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has written anything: it starts in ~1 s, importing torch
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == console.BROKEN_PIPE, err
    assert err == ""


def test_argparse_refusals_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["generate", "--model", "m", "--prompt", "x", "--out", "a.png", "--n", "many"])
    assert stop.value.code == 2
    assert _one_line(capsys) == ("error: vislora generate: argument --n: invalid int value: 'many' (see --help)")


def test_json_object_type():
    assert checks.json_object('{"depth": 4}') == {"depth": 4}
    for text in ("[1,2]", "3", "nope"):
        with pytest.raises(argparse.ArgumentTypeError):
            checks.json_object(text)


def test_device_rule_on_a_machine_with_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    rule = checks.device_present()
    assert rule("cuda") is None and rule("cuda:0") is None and rule("cpu") is None
    assert rule("cuda:1") == "this machine has 1 CUDA device(s)"
    assert rule("gpu") == "is not a device; use cpu, cuda, cuda:1 or mps"

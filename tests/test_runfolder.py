"""Run folders keep their identity: a second run into a used --out is refused before anything loads (unless
--resume with the same settings, or --overwrite), pruning touches only this run's good checkpoints, and
corrupt checkpoints never outrank good ones. The first run's files stay intact and the folder resumable."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_recipe import _write_images, base_weights

from vislora.checks import UsageError
from vislora.formats import container
from vislora.recipes import classify_vit
from vislora.train import checkpoint, runfolder
from vislora.train.checkpoint import CheckpointWarning

IGNORE = {"out", "resume", "overwrite"}


def _ident(**settings) -> runfolder.Identity:
    return runfolder.identity(argparse.Namespace(**{"out": "o", "lr": 1e-3, "seed": 0, **settings}), IGNORE, "classify")


def _write(run, step, digest="a", keep=2):
    return checkpoint.write(run, step, tensors={"w": {"a": torch.full((3,), float(step))}},
                            documents={"state": {"step": step}}, config_hash=digest, keep=keep)


def _corrupt(folder: Path) -> None:
    data = bytearray((folder / "w.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "w.safetensors").write_bytes(bytes(data))


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in run.iterdir() if p.name.startswith("ckpt-"))


# -- the folder's identity ---------------------------------------------------------------------------------------
def test_an_empty_or_new_folder_is_free(tmp_path):
    runfolder.check_folder(tmp_path / "new", _ident(), resume=False, overwrite=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("not a run's file")
    runfolder.check_folder(tmp_path / "mine", _ident(), resume=False, overwrite=False)


def test_a_used_folder_is_refused_naming_what_differs(tmp_path):
    runfolder.claim(tmp_path, _ident(seed=0), overwrite=False)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["seed"] == 0 and record["settings_hash"] == _ident(seed=0).settings_hash
    assert record["settings"] == {"lr": 1e-3, "seed": 0} and record["task"] == "classify"
    with pytest.raises(UsageError, match=r"^--out .*: holds another run's files \(--seed 1 here, 0 there\); add "
                                         r"--resume to continue it, --overwrite to replace it"):
        runfolder.check_folder(tmp_path, _ident(seed=1), resume=False, overwrite=False)
    with pytest.raises(UsageError, match="holds a run with these settings; add --resume"):
        runfolder.check_folder(tmp_path, _ident(seed=0), resume=False, overwrite=False)
    with pytest.raises(UsageError, match=r"made with other settings \(--seed 1 here, 0 there\)"):
        runfolder.check_folder(tmp_path, _ident(seed=1), resume=True, overwrite=False)
    with pytest.raises(UsageError, match="choose one"):
        runfolder.check_folder(tmp_path, _ident(seed=0), resume=True, overwrite=True)
    runfolder.check_folder(tmp_path, _ident(seed=0), resume=True, overwrite=False)
    runfolder.check_folder(tmp_path, _ident(seed=1), resume=False, overwrite=True)


def test_a_folder_from_before_run_json_resumes_by_its_checkpoints(tmp_path):
    _write(tmp_path / "checkpoints", 1)
    runfolder.check_folder(tmp_path, _ident(), resume=True, overwrite=False)  # the checkpoints' hash decides
    with pytest.raises(UsageError, match=r"another run's files \(checkpoints\)"):
        runfolder.check_folder(tmp_path, _ident(), resume=False, overwrite=False)


def test_overwrite_deletes_the_previous_runs_files_only(tmp_path):
    runfolder.claim(tmp_path, _ident(seed=0), overwrite=False)
    _write(tmp_path / "checkpoints", 1)
    for name in ("adapter.safetensors", "metrics.json", "loss.png"):
        (tmp_path / name).write_text("A's")
    (tmp_path / "class_images").mkdir()
    (tmp_path / "class_images" / "class-00000.png").write_text("kept: a cache")
    (tmp_path / "notes.md").write_text("the user's")
    runfolder.claim(tmp_path, _ident(seed=1), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_images", "notes.md", "run.json"]
    assert json.loads((tmp_path / "run.json").read_text())["seed"] == 1


def test_an_unreadable_run_json_is_one_line(tmp_path):
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(UsageError, match="run.json is unreadable"):
        runfolder.check_folder(tmp_path, _ident(), resume=True, overwrite=False)


# -- pruning ------------------------------------------------------------------------------------------------------
def test_corrupt_checkpoints_never_push_good_ones_out(tmp_path):
    """The issue's case: checkpoints 280 and 300 carry COMPLETE but are corrupt. The resumed run restarts at 0;
    its checkpoints survive pruning, and after a second interruption it resumes from its newest good one."""
    for step in (280, 300):
        _corrupt(_write(tmp_path, step))
    with pytest.warns(CheckpointWarning):
        assert checkpoint.latest(tmp_path, config_hash="a") is None  # nothing good: start at step 0
    for step in (20, 40, 60):
        _write(tmp_path, step)
    assert _steps(tmp_path) == [40, 60, 280, 300]  # the two newest good ones kept; corrupt ones never counted
    with pytest.warns(CheckpointWarning, match="ckpt-000000300"):
        found = checkpoint.latest(tmp_path, config_hash="a")
    assert found.step == 60  # the newest good one, not step 0 again


def test_pruning_leaves_another_runs_checkpoints_alone(tmp_path):
    for step in (1, 2, 3):
        _write(tmp_path, step, digest="run-a", keep=1)
    for step in (4, 5, 6):
        _write(tmp_path, step, digest="run-b", keep=2)
    assert _steps(tmp_path) == [3, 5, 6]


def test_the_newest_good_checkpoint_survives_any_keep(tmp_path):
    _write(tmp_path, 1, keep=1)
    _corrupt(_write(tmp_path, 9, keep=1))
    _write(tmp_path, 2, keep=1)
    assert _steps(tmp_path) == [2, 9]
    with pytest.warns(CheckpointWarning):
        assert checkpoint.latest(tmp_path, config_hash="a").step == 2


# -- the classification recipe, end to end -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runfolder")
    return {"train": _write_images(root / "train", 4, 0), "weights": base_weights(root), "root": root}


def _run(data, out: Path, *extra: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        return classify_vit.main(["--data", str(data["train"]), "--val-split", "0", "--weights", str(data["weights"]),
                                  "--batch-size", "4", "--workers", "0", "--no-progress", "--epochs", "2",
                                  "--checkpoint-every", "1", "--keep", "2", "--out", str(out), *extra])


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def first(data) -> Path:
    """Run A: 2 epochs of 3 steps, a checkpoint each step, the newest 2 kept."""
    out = data["root"] / "a"
    assert _run(data, out) == 0
    return out


def test_a_second_run_is_refused_and_the_first_stays_intact(data, first, tmp_path, capsys):
    before = _snapshot(first)
    assert set(before) >= {"run.json", "adapter.safetensors", "metrics.json", "checkpoints/ckpt-000000006/COMPLETE"}
    assert _run(data, first, "--seed", "1") == 2
    assert "--seed 1 here, 0 there" in _last_error(capsys)
    assert _run(data, first, "--seed", "1", "--resume") == 2
    assert "made with other settings (--seed 1 here, 0 there)" in _last_error(capsys)
    assert _run(data, first) == 2
    assert "holds a run with these settings; add --resume" in _last_error(capsys)
    assert _snapshot(first) == before  # not a byte changed


def test_overwrite_replaces_the_run_whole(data, first, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(first, out)
    assert _run(data, out, "--seed", "1", "--overwrite") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 1
    hashes = {json.loads((p / "manifest.json").read_text())["config_hash"] for p in (out / "checkpoints").iterdir()}
    assert len(hashes) == 1 and _steps(out / "checkpoints") == [5, 6]  # only B's checkpoints
    a, b = (container.read(d / "adapter.safetensors")[0] for d in (first, out))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # B's adapter, not A's


def test_a_resume_over_corrupt_checkpoints_keeps_its_own_and_resumes_from_them(data, first, tmp_path, capsys,
                                                                                monkeypatch):
    """Every checkpoint of A corrupt: --resume starts at 0; interrupted after its step-2 checkpoint, the next
    --resume starts at step 2 (not 0 again) and ends with A's adapter, bit for bit."""
    out = tmp_path / "c"
    shutil.copytree(first, out)
    for name in ("adapter.safetensors", "metrics.json", "metrics.csv", "metrics.png"):
        (out / name).unlink()
    for folder in (out / "checkpoints").iterdir():
        data_file = folder / "trainable.safetensors"
        corrupted = bytearray(data_file.read_bytes())
        corrupted[-1] ^= 0xFF
        data_file.write_bytes(bytes(corrupted))
    real_save = classify_vit.save_training

    def interrupted_after_step_2(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(classify_vit, "save_training", interrupted_after_step_2)
    assert _run(data, out, "--resume") == 130
    assert "starting at step 0" in capsys.readouterr().out
    assert _steps(out / "checkpoints") == [1, 2, 5, 6]  # its own two kept; A's corrupt 5 and 6 never counted
    monkeypatch.setattr(classify_vit, "save_training", real_save)
    assert _run(data, out, "--resume") == 0
    assert "(step 2)" in capsys.readouterr().out
    a, c = (container.read(d / "adapter.safetensors")[0] for d in (first, out))
    assert set(a) == set(c) and all(torch.equal(a[k], c[k]) for k in a)
    assert checkpoint.latest(out / "checkpoints").step == 6  # the folder is good and resumable again

"""Checkpoints are transactions, and training state round-trips exactly without pickle."""

import json
import os
import random

import numpy as np
import pytest
import torch

from vislora.train import checkpoint
from vislora.train.checkpoint import CheckpointError, CheckpointWarning
from vislora.train.trainstate import load_optimizer_state, optimizer_state, rng_state, set_rng_state


def _write(run, step, keep=10, digest="h"):
    return checkpoint.write(run, step, tensors={"w": {"a": torch.full((3,), float(step))}},
                            documents={"state": {"step": step}}, config_hash=digest, keep=keep)


def _truncate(p):
    data = (p / "w.safetensors").read_bytes()
    (p / "w.safetensors").write_bytes(data[: len(data) // 2])


def _flip_byte(p):
    data = bytearray((p / "w.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (p / "w.safetensors").write_bytes(bytes(data))


CORRUPTIONS = {
    "missing marker": lambda p: (p / checkpoint.MARKER).unlink(),
    "truncated file": _truncate,
    "zero-length file": lambda p: (p / "state.json").write_bytes(b""),
    "hash mismatch": _flip_byte,
    "extra file": lambda p: (p / "stray.bin").write_bytes(b"x"),
    "not ours": lambda p: (p / checkpoint.MANIFEST).write_text(json.dumps({"format": "other", "files": {},
                                                                            "step": 2})),
}


def test_layout_and_latest(tmp_path):
    _write(tmp_path, 1)
    path = _write(tmp_path, 2)
    assert sorted(os.listdir(path)) == ["COMPLETE", "manifest.json", "state.json", "w.safetensors"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 2 and manifest["format"] == checkpoint.FORMAT and set(manifest["files"]) == {
        "state.json", "w.safetensors"}
    found = checkpoint.latest(tmp_path, config_hash="h")
    assert found.step == 2 and found.json("state") == {"step": 2}
    assert torch.equal(found.tensors("w")["a"], torch.full((3,), 2.0))


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_a_broken_newest_checkpoint_falls_back_with_a_warning(tmp_path, how):
    _write(tmp_path, 1)
    CORRUPTIONS[how](_write(tmp_path, 2))
    with pytest.warns(CheckpointWarning, match="ckpt-000000002"):
        found = checkpoint.latest(tmp_path)
    assert found.step == 1


def test_other_settings_are_refused(tmp_path):
    _write(tmp_path, 1, digest="settings-a")
    with pytest.raises(CheckpointError, match="different training settings"):
        checkpoint.latest(tmp_path, config_hash="settings-b")


def test_prune_keeps_the_newest_complete(tmp_path):
    for step in range(1, 6):
        _write(tmp_path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000004", "ckpt-000000005"]


def test_a_write_that_dies_leaves_the_previous_checkpoint_and_no_debris(tmp_path, monkeypatch):
    _write(tmp_path, 1, keep=1)
    real_replace = os.replace

    def dies(*args):
        raise KeyboardInterrupt("killed during the rename")

    monkeypatch.setattr(checkpoint.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, 2, keep=1)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert checkpoint.latest(tmp_path).step == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000001"]
    (tmp_path / ".tmp-ckpt-left-by-sigkill").mkdir()  # what a SIGKILL mid-write leaves
    _write(tmp_path, 3, keep=1)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000003"]


def test_rewriting_a_step_replaces_it(tmp_path):
    _write(tmp_path, 1)
    checkpoint.write(tmp_path, 1, tensors={}, documents={"state": {"again": True}})
    assert checkpoint.latest(tmp_path).json("state") == {"again": True}
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000001"]


def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(4, 3, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_optimizer_state_round_trip_is_exact():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, betas=(0.8, 0.95))
    _train(a, opt_a, 3, seed=1)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.5)
    tensors, info = optimizer_state(opt_a)
    json.dumps(info)  # JSON only, no pickle
    load_optimizer_state(opt_b, tensors, json.loads(json.dumps(info)))
    assert opt_b.param_groups[0]["lr"] == 1e-2 and opt_b.param_groups[0]["betas"] == (0.8, 0.95)
    _train(a, opt_a, 3, seed=2)
    _train(b, opt_b, 3, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_rng_state_round_trip():
    tensors, info = rng_state()
    info = json.loads(json.dumps(info))
    first = (torch.rand(3), np.random.rand(2), random.random())
    torch.manual_seed(123)
    np.random.seed(4)
    random.seed(5)
    set_rng_state(tensors, info)
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]

"""Each verdict of the diffusion recipes, triggered by a run made for it on the digits diffusion base: a tiny
lr barely changes the model, a huge one diverges (stopped early, the last good weights kept), a fitting one
learns; metrics.json records the verdict and its numbers."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from sd_tiny import save_pipeline
from test_sd_train import DIGITS_SD, FAST, _digit

from vislora.formats import container
from vislora.recipes import dreambooth_sd, style_sd


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verdict")
    base = DIGITS_SD if (DIGITS_SD / "model_index.json").is_file() else save_pipeline(root)
    for i in range(4):  # vertical bars: nothing like the digits the base draws
        _digit(root / "instance", f"{i}.png", (32, 32), i - 2)
    return {"root": root, "base": base, "instance": root / "instance"}


def _run(world, name: str, *extra: str, task: str = "dreambooth") -> tuple[dict, str]:
    out = world["root"] / name
    if task == "dreambooth":
        argv = ["--instance-data", str(world["instance"]), "--instance-prompt", "a sks digit", "--prior-preservation",
                "--class-prompt", "a digit", "--num-class-images", "4", "--class-data", str(world["root"] / "classes")]
    else:
        argv = ["--data", str(world["instance"]), "--caption", "a digit"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main = dreambooth_sd.main if task == "dreambooth" else style_sd.main
        # These runs set the step size itself (AdamW): lr 5 must diverge and lr 1e-7 barely move.
        assert main(["--model", str(world["base"]), "--out", str(out), *argv, *FAST, "--optimizer", "adamw",
                     *extra]) == 0
    return json.loads((out / "metrics.json").read_text()), printed.getvalue()


def test_a_tiny_lr_barely_changes_and_names_lr(world):
    metrics, printed = _run(world, "tiny", "--steps", "6", "--lr", "1e-7")
    v = metrics["verdict"]
    assert v["outcome"] == "barely changed" and v["flag"] == "--lr", v
    assert v["moved"] < 1e-3 and abs(v["eval_loss_change"]) < 1e-3 and v["drift"] < 1e-3
    assert printed.splitlines()[-1] == f"verdict: barely changed: {v['reason']}"
    assert v["reason"].endswith("raise --lr (now 1e-07)")


def test_a_fitting_lr_learns(world):
    metrics, printed = _run(world, "fit", "--steps", "24", "--lr", "1e-2")
    v = metrics["verdict"]
    assert v["outcome"] == "learned", v
    assert v["eval_loss_change"] < -0.1 and v["toward"] >= 0.15 and v["moved"] >= 0.02
    assert v["drift"] is not None and v["spread_ratio"] > 0.25
    assert printed.splitlines()[-1].startswith("verdict: learned: eval loss")


def test_a_huge_lr_diverges_stops_early_and_keeps_the_last_good_weights(world):
    metrics, printed = _run(world, "huge", "--steps", "40", "--lr", "5")
    v = metrics["verdict"]
    assert v["outcome"] == "diverged" and v["reason"].startswith("stopped early: step "), v
    stopped = int(v["reason"].split("step ")[1].split(":")[0])
    assert metrics["steps"] == stopped < 40 and len(metrics["history"]) == stopped
    assert v["kept_step"] < stopped and v["kept_step"] % 5 == 0  # kept at a healthy watch point
    assert "diverged" in printed.splitlines()[-1]
    tensors = container.read(world["root"] / "huge" / "adapter.safetensors")[0]
    assert all(torch.isfinite(t).all() for t in tensors.values())
    if v["kept_step"] == 0:  # nothing good was learned: the adapter is its initial, zero-effect state
        assert all(float(t.abs().max()) == 0.0 for k, t in tensors.items() if "lora_B" in k or ".up." in k)
    assert not math.isnan(metrics["history"][0]["loss"])


def test_a_style_run_ends_with_a_verdict_without_drift(world):
    metrics, _ = _run(world, "style", "--steps", "4", "--lr", "1e-7", task="style")
    v = metrics["verdict"]
    assert v["outcome"] == "barely changed" and v["drift"] is None

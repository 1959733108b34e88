"""The classification recipe end to end on a tiny ViT: files, resume (also after SIGKILL), predict, modes, bad
data, two processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from images_corpus import write_corpus
from PIL import Image

from vislora import cli, read_adapter
from vislora.train.checkpoint import CheckpointWarning
from vislora.classify.classifier import METADATA_KEY, load_classifier, predict
from vislora.classify.folders import SkippedImageWarning
from vislora.formats import container
from vislora.recipes import classify_vit

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vit_tiny_patch16_224"
KWARGS = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 60), "red": (220, 30, 30)}


def _write_images(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = np.clip(rng.normal(colour, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Train (3 classes x 6) and validation (3 x 2) folders and a base weights file recording its model."""
    root = tmp_path_factory.mktemp("recipe")
    return {"train": _write_images(root / "train", 6, 0), "val": _write_images(root / "val", 2, 1),
            "weights": base_weights(root), "root": root}


def base_weights(root: Path) -> Path:
    """A tiny ViT's weights file (seed 0) that records its timm model and kwargs, as --weights takes it."""
    torch.manual_seed(0)
    base = timm.create_model(MODEL, pretrained=False, num_classes=7, **KWARGS)
    weights = root / "base.safetensors"
    container.write(weights, base.state_dict(), {"format": "pt", "timm_model": MODEL,
                                                 "timm_model_kwargs": json.dumps(KWARGS)})
    return weights


def _args(data, out, *extra) -> list[str]:
    return ["--data", str(data["train"]), "--val-data", str(data["val"]), "--weights", str(data["weights"]),
            "--batch-size", "4", "--workers", "0", "--no-progress", "--out", str(out), *extra]


def _tensors(path) -> dict[str, torch.Tensor]:
    return container.read(path)[0]


@pytest.fixture(scope="module")
def trained(data) -> Path:
    """Two epochs of LoRA, 4 steps each, with every step checkpointed and the merged model written too."""
    out = data["root"] / "run"
    assert classify_vit.main(_args(data, out, "--epochs", "2", "--dropout", "0.1", "--lr", "3e-3", "--merge",
                                   "--checkpoint-every", "1", "--keep", "100")) == 0
    return out


def test_outputs(trained, data):
    assert {"adapter.safetensors", "model.safetensors", "metrics.json", "metrics.csv", "metrics.png",
            "checkpoints"} <= set(os.listdir(trained))
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= metrics["val_top1"] <= 1.0 and metrics["val_top1"] * 6 == round(metrics["val_top1"] * 6)
    assert 0 < metrics["trainable_params"] < metrics["total_params"] and metrics["steps"] == 8
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    # 3 classes: top-5 would be 100% by construction, so there is none (nor in the plot).
    assert metrics["val_top5"] is None and all(row["val_top5"] is None for row in metrics["history"])
    assert len((trained / "metrics.csv").read_text().splitlines()) == 3
    assert (trained / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads(container.read(trained / "adapter.safetensors")[1][METADATA_KEY])
    assert info["class_to_idx"] == {"blue": 0, "green": 1, "red": 2}
    base = info["base"]
    assert base["model"] == MODEL and base["model_kwargs"] == KWARGS and base["source"] == "file"
    assert not os.path.isabs(base["weights"]) and (trained / base["weights"]).resolve() == data["weights"].resolve()
    assert len(base["sha256"]) == 64
    # The adapter file holds LoRA factors and the new head, nothing of the frozen base.
    keys = set(_tensors(trained / "adapter.safetensors"))
    assert {"head.weight", "head.bias"} <= keys and all("lora_" in k or k.startswith("head.") for k in keys)


def test_the_plot_names_the_base_and_has_no_top5_with_few_classes(data, tmp_path, monkeypatch):
    drawn = {}

    def plot(history, path, title=""):
        drawn.update(title=title, top5=[row.get("val_top5") for row in history])
        return path

    monkeypatch.setattr(classify_vit, "plot_history", plot)
    assert classify_vit.main(_args(data, tmp_path / "run", "--epochs", "1")) == 0
    assert drawn["title"] == ("base.safetensors (timm vit_tiny_patch16_224 with depth=1, embed_dim=32, img_size=16, "
                              "num_heads=2, patch_size=8): lora")
    assert drawn["top5"] == [None]


def test_base_titles_say_what_the_base_is():
    from vislora.classify.classifier import BaseRecord, base_title

    assert base_title(BaseRecord("vit_small_patch16_224", source="hub", hub_tag="vit_small_patch16_224.augreg_in21k")
                      ) == "vit_small_patch16_224.augreg_in21k (pretrained)"
    assert base_title(BaseRecord("vit_tiny_patch16_224", {"depth": 2}, init_seed=3)) == (
        "timm vit_tiny_patch16_224 with depth=2, random init (seed 3)")


def _probabilities(out: Path, images: list[Path], *extra: str) -> list[dict]:
    cli = Path(sys.executable).with_name("vislora")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "vislora.cli"]
    done = subprocess.run([*command, "predict", "--adapter", str(out / "adapter.safetensors"), "--json",
                           "--top-k", "3", *extra, *map(str, images)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_predict_matches_the_merged_models_logits(trained, data):
    images = [data["val"] / "red" / "0.png", data["val"] / "blue" / "1.png"]
    predicted = _probabilities(trained, images)
    # The merged file is a plain timm model; preprocessing is written out here by hand.
    model = timm.create_model(MODEL, pretrained=False, num_classes=3, **KWARGS).eval()
    model.load_state_dict(_tensors(trained / "model.safetensors"))
    classes = ["blue", "green", "red"]
    for image, result in zip(images, predicted):
        pixels = np.asarray(Image.open(image).convert("RGB"))
        assert pixels.shape[:2] == (20, 24)
        from torchvision.transforms import functional as TF

        x = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(Image.fromarray(pixels), 18,
                                                               interpolation=TF.InterpolationMode.BICUBIC), 16)),
                         [0.5] * 3, [0.5] * 3)
        with torch.no_grad():
            probs = model(x[None]).softmax(-1)[0]
        assert result["image"] == str(image) and len(result["top"]) == 3
        for entry in result["top"]:
            assert entry["p"] == pytest.approx(probs[classes.index(entry["label"])].item(), abs=1e-5)
        assert [e["p"] for e in result["top"]] == sorted((e["p"] for e in result["top"]), reverse=True)
    # The merged model file predicts the same through the library too.
    again = predict(load_classifier(trained / "model.safetensors"), images, top_k=3)
    assert [[label for label, _ in r] for r in again] == [[e["label"] for e in r["top"]] for r in predicted]


def test_pretrained_takes_timms_own_loading_path(data, tmp_path, capsys):
    """--pretrained goes through timm's pretrained loader (pointed at a local file here, as there is no hub),
    and predict rebuilds that base from what the adapter recorded, with no other argument."""
    kwargs = {**KWARGS, "pretrained_cfg_overlay": {"file": str(data["weights"])}}
    out = tmp_path / "hub"
    assert classify_vit.main(["--data", str(data["train"]), "--val-data", str(data["val"]), "--model", MODEL,
                              "--pretrained", "--model-kwargs", json.dumps(kwargs), "--batch-size", "4",
                              "--workers", "0", "--no-progress", "--max-steps", "2", "--merge",
                              "--out", str(out)]) == 0
    merged, base = _tensors(out / "model.safetensors"), _tensors(data["weights"])
    assert torch.equal(merged["patch_embed.proj.weight"], base["patch_embed.proj.weight"])  # not adapted: as loaded
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])  # adapted, merged
    meta = container.read(out / "adapter.safetensors")[1]
    assert MODEL in meta[METADATA_KEY] and '"source": "hub"' in meta[METADATA_KEY]
    image = str(data["val"] / "red" / "0.png")
    capsys.readouterr()
    assert cli.main(["predict", "--adapter", str(out / "adapter.safetensors"), image]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def _one_error_line(capsys) -> str:
    """The last line on stderr (progress bars may precede it): the error, with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.replace("\r", "\n").strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def test_predict_checks_the_base(trained, data, tmp_path, capsys, monkeypatch):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(trained / "adapter.safetensors", moved)
    image = str(data["val"] / "red" / "0.png")
    args = ["predict", "--adapter", str(moved / "adapter.safetensors")]
    assert cli.main([*args, image]) == 2
    assert "base weights not found" in _one_error_line(capsys)
    tensors, meta = container.read(data["weights"])
    tensors["norm.bias"] = tensors["norm.bias"] + 1e-3  # another base of the same shapes
    other = tmp_path / "other_base.safetensors"
    container.write(other, tensors, meta)
    assert cli.main([*args, "--weights", str(other), image]) == 2
    line = _one_error_line(capsys)
    assert "sha256" in line and "other_base" in line
    # --weights naming the right base works from anywhere, reading the base once (hash and load together).
    base, reads, real_open, real_read_bytes = Path(data["weights"]).resolve(), [], open, Path.read_bytes

    def counting_open(f, *a, **k):
        reads.append(isinstance(f, (str, os.PathLike)) and Path(f).resolve() == base)
        return real_open(f, *a, **k)

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(Path, "read_bytes", lambda p: reads.append(p.resolve() == base) or real_read_bytes(p))
    assert cli.main([*args, "--weights", str(data["weights"]), image]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")
    assert sum(reads) == 1


def test_resume_gives_the_same_adapter(trained, data, tmp_path):
    """Cut the run after step 5, break checkpoint 5, resume: the run falls back to step 4 (an epoch end whose
    validation never ran) and still ends with the uninterrupted run's adapter, bit for bit."""
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    for name in ("adapter.safetensors", "model.safetensors", "metrics.json", "metrics.csv", "metrics.png"):
        (out / name).unlink()
    for step in range(6, 9):
        shutil.rmtree(out / "checkpoints" / f"ckpt-{step:09d}")
    (out / "checkpoints" / "ckpt-000000005" / "trainable.safetensors").write_bytes(b"")
    with pytest.warns(CheckpointWarning, match="ckpt-000000005"):
        assert classify_vit.main(_args(data, out, "--epochs", "2", "--dropout", "0.1", "--lr", "3e-3", "--merge",
                                       "--checkpoint-every", "1", "--keep", "100", "--resume")) == 0
    a, b = _tensors(trained / "adapter.safetensors"), _tensors(out / "adapter.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().max() > 0 for k in a)  # it did train
    first, second = (json.loads((d / "metrics.json").read_text())["history"] for d in (trained, out))
    drop = ("images_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in first] == \
           [{k: v for k, v in r.items() if k not in drop} for r in second]


def test_other_settings_do_not_resume(trained, data, tmp_path, capsys):
    out = tmp_path / "changed"
    shutil.copytree(trained / "checkpoints", out / "checkpoints")
    assert classify_vit.main(_args(data, out, "--epochs", "2", "--lr", "1e-2", "--resume")) == 2
    assert "different training settings" in _one_error_line(capsys)
    assert not (out / "run.json").exists()  # the refused run did not make the folder its own


@pytest.mark.parametrize("mode", ["--head-only", "--full"])
def test_head_only_and_full(data, tmp_path, mode):
    out = tmp_path / "run"
    assert classify_vit.main(_args(data, out, mode, "--max-steps", "2")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    model = timm.create_model(MODEL, pretrained=False, num_classes=3, **KWARGS)
    total = sum(p.numel() for p in model.parameters())
    expected = 3 * 32 + 3 if mode == "--head-only" else total
    assert metrics["trainable_params"] == expected and metrics["total_params"] == total
    assert metrics["steps"] == 2 and not (out / "adapter.safetensors").exists()
    trained = _tensors(out / "model.safetensors")
    base = _tensors(data["weights"])
    changed = {k for k in base if not k.startswith("head.") and not torch.equal(base[k], trained[k])}
    assert (changed == set()) if mode == "--head-only" else changed


def test_dora_flag_reaches_the_adapter(data, tmp_path):
    out = tmp_path / "run"
    assert classify_vit.main(_args(data, out, "--dora", "--max-steps", "2", "--merge")) == 0
    adapter = read_adapter(out / "adapter.safetensors")
    assert adapter.config.dora and adapter.modules
    assert all(w.magnitude is not None and w.magnitude.shape == (w.factors["up"].shape[0], 1)
               for w in adapter.modules.values())
    from vislora.recipes import dreambooth_sd

    assert dreambooth_sd.parse_args(["--model", "m", "--instance-data", "d", "--instance-prompt", "p", "--out", "o",
                                   "--dora"]).dora


def test_bad_images_are_skipped_and_counted(data, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(data["train"], folder)
    names, skipped = write_corpus(folder / "red" / "odd")
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert classify_vit.main(["--data", str(folder), "--val-split", "0.3", "--model", MODEL, "--model-kwargs",
                                  json.dumps(KWARGS), "--batch-size", "4", "--epochs", "1", "--workers", "0",
                                  "--no-progress", "--out", str(out)]) == 0
    assert sum(issubclass(w.category, SkippedImageWarning) for w in caught) == len(skipped) + 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == len(skipped)


@pytest.mark.parametrize("problem, message", [
    ("missing", "no such folder"),
    ("empty class", "the class folder is empty"),
    ("no images", "none of its"),
])
def test_unusable_data_is_one_error_line(data, tmp_path, capsys, problem, message):
    folder = tmp_path / "data"
    if problem == "empty class":
        shutil.copytree(data["train"], folder)
        (folder / "violet").mkdir()
    elif problem == "no images":
        (folder / "x").mkdir(parents=True)
        (folder / "x" / "a.jpg").write_text("not a picture")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = classify_vit.main(["--data", str(folder), "--model", MODEL, "--out", str(tmp_path / "out")])
    assert status == 2 and message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_two_processes_match_one_with_the_same_global_batch(data, tmp_path):
    """torchrun, 2 CPU processes (gloo) x batch 2 == 1 process x batch 4: same images per step, averaged
    gradients; only the main process writes; validation counts are summed over both."""
    two, one = tmp_path / "two", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "recipes" / "classify_vit.py"),
                           *_args(data, two, "--epochs", "1", "--batch-size", "2")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert classify_vit.main(_args(data, one, "--epochs", "1", "--batch-size", "4")) == 0
    a, b = _tensors(two / "adapter.safetensors"), _tensors(one / "adapter.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["history"][0]["val_top1"] == json.loads(
        (one / "metrics.json").read_text())["history"][0]["val_top1"]
    assert not [p for p in two.rglob("*") if p.name.startswith(".")]  # no temp files left by a second writer
    assert done.stdout.count("adapter:") == 1  # only the main process reports


def test_non_finite_training_stops_with_the_step_and_files(data, tmp_path, capsys, monkeypatch):
    """From the third training forward on, the head outputs NaN: three skipped steps, then the run stops as
    diverged, naming the step and the last batch's files, and writes the last good weights."""
    build = classify_vit.build_model
    calls = {"n": 0}

    def poisoned(*args, **kw):
        model = build(*args, **kw)

        def hook(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 2:
                    return output * float("nan")
            return output

        model.get_classifier().register_forward_hook(hook)
        return model

    monkeypatch.setattr(classify_vit, "build_model", poisoned)
    out = tmp_path / "run"
    status = classify_vit.main(_args(data, out, "--epochs", "3", "--checkpoint-every", "1", "--keep", "100"))
    verdict = json.loads((out / "metrics.json").read_text())["verdict"]
    assert status == 0 and verdict["outcome"] == "diverged"
    assert verdict["reason"].startswith("stopped early: step 5: 3 steps in a row had NaN/inf")
    assert str(data["train"]) in verdict["reason"] and capsys.readouterr().out.splitlines()[-1].startswith(
        "verdict: diverged: stopped early: step 5")
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == [f"ckpt-{s:09d}" for s in (1, 2, 3, 4)]  # skipped steps leave the weights as they were
    a, b = (_tensors(out / "checkpoints" / f"ckpt-{s:09d}" / "trainable.safetensors") for s in (2, 4))
    assert all(torch.isfinite(t).all() and torch.equal(t, b[k]) for k, t in a.items())
    kept = _tensors(out / "adapter.safetensors")  # the weights of the last healthy watch point
    assert verdict["kept_step"] in (0, 3) and all(torch.isfinite(t).all() for t in kept.values())


@pytest.mark.parametrize("lr, outcome, flag", [("1e-7", "barely changed", "--lr"), ("300", "diverged", "--lr"),
                                               ("3e-2", "learned", None)])
def test_each_verdict_from_a_run_made_for_it(data, tmp_path, capsys, lr, outcome, flag):
    """A tiny lr leaves the head at a uniform guess; a huge one throws the loss above guessing and is stopped
    early; a fitting one separates the three colours."""
    out = tmp_path / "run"
    assert classify_vit.main(_args(data, out, "--epochs", "4", "--lr", lr)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    verdict = metrics["verdict"]
    assert (verdict["outcome"], verdict["flag"]) == (outcome, flag), verdict
    assert capsys.readouterr().out.splitlines()[-1] == f"verdict: {outcome}: {verdict['reason']}"
    if outcome == "diverged":
        assert verdict["reason"].startswith("stopped early") and metrics["steps"] < 16
    if outcome == "learned":
        assert verdict["val_top1"] >= 0.8 and verdict["loss_fall"] >= 0.1


def test_gradient_accumulation_matches_the_larger_batch(data, tmp_path):
    """2 micro-batches of 2 per step see the images of one batch of 4, and average the same gradients."""
    accumulated, whole = tmp_path / "accumulated", tmp_path / "whole"
    assert classify_vit.main(_args(data, accumulated, "--max-steps", "3", "--batch-size", "2",
                                   "--grad-accum", "2")) == 0
    assert classify_vit.main(_args(data, whole, "--max-steps", "3", "--batch-size", "4")) == 0
    a, b = _tensors(accumulated / "adapter.safetensors"), _tensors(whole / "adapter.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_bf16_mixed_precision_on_cpu_keeps_fp32_weights(data, tmp_path):
    """Autocast in bf16 (accelerate), while the trained factors and the saved file stay float32; runs with
    other precisions before and after it in the same process work too."""
    assert classify_vit.main(_args(data, tmp_path / "fp32", "--max-steps", "1", "--mixed-precision", "no")) == 0
    out = tmp_path / "bf16"
    assert classify_vit.main(_args(data, out, "--max-steps", "2", "--mixed-precision", "bf16")) == 0
    saved = _tensors(out / "adapter.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mixed_precision"] == "bf16" and 0.0 <= metrics["val_top1"] <= 1.0
    assert classify_vit.main(_args(data, tmp_path / "again", "--max-steps", "1", "--mixed-precision", "no")) == 0
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["mixed_precision"] == "no"


def _recipe_process(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "classify_vit.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_killed_run_resumes_to_the_uninterrupted_adapter(data, tmp_path):
    """SIGKILL a real training process once its third checkpoint is complete (it is then somewhere in later
    steps or checkpoint writes), resume it, and get the adapter of a run that was never interrupted."""
    args = ["--epochs", "4", "--lr", "3e-3", "--checkpoint-every", "1", "--keep", "2"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = _recipe_process(_args(data, killed, *args))
    third = killed / "checkpoints" / "ckpt-000000003" / "COMPLETE"
    try:
        deadline = time.monotonic() + 240
        while not third.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.kill()
    finally:
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (killed / "adapter.safetensors").exists()
    # Another run (another seed) into the killed run's folder is refused, and changes nothing there.
    before = {p: p.read_bytes() for p in killed.rglob("*") if p.is_file() and ".tmp-" not in str(p)}
    assert classify_vit.main(_args(data, killed, *args, "--seed", "1")) == 2
    assert {p: p.read_bytes() for p in killed.rglob("*") if p.is_file() and ".tmp-" not in str(p)} == before

    resumed = _recipe_process(_args(data, killed, *args, "--resume"))
    reference = _recipe_process(_args(data, whole, *args))
    outputs = [p.communicate(timeout=300) for p in (resumed, reference)]
    for p, (_, err) in zip((resumed, reference), outputs):
        assert p.returncode == 0, err[-3000:]
    assert re.search(r"resuming from .*ckpt-0+([3-9]|1\d) \(step", outputs[0][0])  # not a fresh start
    a, b = _tensors(whole / "adapter.safetensors"), _tensors(killed / "adapter.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in killed.rglob("*") if p.name.startswith(".")]  # the torn write was cleaned up


def test_the_defaults_learn_a_small_digits_folder(tmp_path):
    """Only data and --out given (plus workers/threads, which do not change the result), on the shipped digits
    base: 20 scans of each of the digits 5-9 it never saw. The defaults' step budget and learning rate reach the
    accuracy the tuned settings reach (docs/classify.md)."""
    sys.path.insert(0, str(ROOT / "samples"))
    from digits import write_digits

    train, val = write_digits(tmp_path / "digits", range(5, 10), val_fraction=0.89)  # ~20 train, ~160 val each
    for folder in val.iterdir():  # 40 validation scans a digit are enough to tell 90% from chance
        for extra in sorted(folder.iterdir())[40:]:
            extra.unlink()
    out = tmp_path / "run"
    assert classify_vit.main(["--data", str(train), "--val-data", str(val), "--weights",
                              str(ROOT / "samples" / "digits_base.safetensors"), "--out", str(out), "--workers", "0",
                              "--threads", "1", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == classify_vit.LEAST_STEPS and metrics["verdict"]["outcome"] == "learned"
    assert metrics["val_top1"] >= 0.90, metrics["val_top1"]


def test_default_learning_rates_follow_the_adapter_scale():
    """The adapter adds (alpha / rank) x up @ down and AdamW steps each factor by about lr, so the default
    adapter lr is LR x rank / alpha; the new head's is LR; --lr sets both; --full has its own."""
    lrs = classify_vit.peak_lrs
    parse = classify_vit.parse_args
    assert lrs("lora", parse(["--data", "d", "--out", "o"])) == {"adapter": 1e-2, "head": 1e-2}
    assert lrs("lora", parse(["--data", "d", "--out", "o", "--alpha", "1"])) == {"adapter": 8e-2, "head": 1e-2}
    assert lrs("lora", parse(["--data", "d", "--out", "o", "--lr", "3e-3"])) == {"adapter": 3e-3, "head": 3e-3}
    assert lrs("full", parse(["--data", "d", "--out", "o", "--full"])) == {"adapter": 1e-3, "head": 1e-3}
    budget = classify_vit.step_budget
    assert (budget(4, None, None), budget(50, None, None), budget(4, 3, None), budget(4, None, 100)) == (300, 500, 12, 100)

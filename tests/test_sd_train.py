"""The Stable Diffusion recipes end to end on the shipped digits base (samples/digits_sd; a tiny
config-built folder where it is absent): DreamBooth with prior preservation, style training with captions
and buckets, resume, two processes, SDXL, checkpointing and caching equivalences."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sd_tiny import save_pipeline

import vislora
from stopped_runs import stopped_before
from two_processes import adapter_gap, launch
from vislora.diffusion.buckets import bucket_sizes
from vislora.diffusion.captions import scan_captioned
from vislora.diffusion.latents import TextCache, cache_latents, load_items
from vislora.formats import container
from vislora.recipes import dreambooth_sd, style_sd
from vislora.diffusion.bases import load_pipeline
from vislora.diffusion import denoise

ROOT = Path(__file__).resolve().parents[1]
DIGITS_SD = ROOT / "samples" / "digits_sd"
FAST = ["--threads", "1", "--no-progress", "--sample-steps", "2", "--validation-seeds", "0", "1"]
SMALL = ["--steps", "2", "--optimizer", "adamw", "--lr", "1e-3"]
KEEP = ["--keep-unconditional", "0.5"]  # the empty prompt on one sample of the global batch: one process's
EVERY_4 = ["--checkpoint-every", "4", "--keep", "10", "--validate-every", "4"]


def _digit(folder: Path, name: str, size: tuple[int, int], shift: int, bar: bool = True) -> Path:
    """A dark stroke on white: a vertical bar (the 'subject') or a horizontal one."""
    a = np.full((size[1], size[0], 3), 255, np.uint8)
    w, h = size
    if bar:
        a[h // 4:3 * h // 4, w // 2 - 3 + shift:w // 2 + 3 + shift] = 0
    else:
        a[h // 2 - 3 + shift:h // 2 + 3 + shift, w // 4:3 * w // 4] = 0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(a).save(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    base = DIGITS_SD if (DIGITS_SD / "model_index.json").is_file() else save_pipeline(root)
    for i in range(4):
        _digit(root / "instance", f"{i}.png", (32, 32), i - 2)
    style = root / "style"
    for i in range(4):  # two wide and two tall pictures: two buckets
        _digit(style, f"w{i}.png", (48, 32), i - 2, bar=False)
        (style / f"w{i}.txt").write_text("a flat digit\n")
        _digit(style, f"t{i}.png", (32, 48), i - 2)
    (style / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"t{i}.png", "text": "a tall digit"}) + "\n"
                                                  for i in range(4)))
    return {"root": root, "base": base, "instance": root / "instance", "style": style}


def _dreambooth(world, out: Path, *extra: str) -> list[str]:
    return ["--model", str(world["base"]), "--instance-data", str(world["instance"]), "--instance-prompt",
            "a sks digit", "--prior-preservation", "--class-prompt", "a digit", "--num-class-images", "4",
            "--class-data", str(world["root"] / "classes"), "--steps", "8", "--optimizer", "adamw", "--lr", "1e-2", "--out", str(out),
            *FAST, *extra]


@pytest.fixture(scope="module")
def dreambooth(world) -> Path:
    out = world["root"] / "db"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert dreambooth_sd.main(_dreambooth(world, out, *EVERY_4)) == 0
    (out / "printed.txt").write_text(printed.getvalue())
    return out


@pytest.fixture(scope="module")
def reference(world) -> dict[str, torch.Tensor]:
    """One process, batch 2, 2 steps: the adapter that 2 processes x batch 1, gradient checkpointing and
    --no-cache must train too."""
    out = world["root"] / "reference"
    assert dreambooth_sd.main(_dreambooth(world, out, *SMALL, *KEEP, "--batch-size", "2")) == 0
    return container.read(out / "adapter.safetensors")[0]


def _fixed_losses(base_dir: Path, adapter: Path, folder: Path, caption: str | None,
                  trigger: str | None = None) -> tuple[float, float]:
    """The evaluation loss (fixed noise and timesteps) over the pictures of `folder`, of the base alone and
    with the adapter file loaded: what a user gets from the file, not the run's own model."""
    base = load_pipeline(str(base_dir))
    data = scan_captioned(folder, caption=caption, trigger=trigger, warn=False)
    items = load_items(data, bucket_sizes(32, dreambooth_sd.multiple_of(base), square=caption is not None))
    cached = cache_latents(base.pipe.vae, items, torch.device("cpu"), False)
    alphas = torch.as_tensor(base.pipe.scheduler.alphas_cumprod, dtype=torch.float32)
    def loss() -> float:  # the prompts encoded anew: the file may hold a text-encoder adapter
        return denoise.eval_loss(base, base.pipe.unet, base.pipe.vae, TextCache(base, True), items, cached, alphas,
                                 "cpu")

    before = loss()
    vislora.load_adapter(base.pipe, adapter)
    return before, loss()


def test_dreambooth_outputs_and_metadata(dreambooth, world):
    assert {"adapter.safetensors", "metrics.json", "metrics.csv", "loss.png", "samples", "checkpoints"} <= set(
        os.listdir(dreambooth))
    assert sorted(os.listdir(dreambooth / "samples")) == ["step-000004.png", "step-000008.png"]
    tensors, meta = container.read(dreambooth / "adapter.safetensors")
    # 4 attention projections x (attn1, attn2) x 4 transformer blocks in the tiny UNet, and (DreamBooth trains
    # the text encoder by default) 4 x 2 layers of its CLIP's self-attention, lora_A and lora_B each.
    unet = [k for k in tensors if k.startswith("unet.")]
    text = [k for k in tensors if k.startswith("text_encoder.")]
    assert len(unet) == 2 * 32 and all(".attn" in k for k in unet)
    assert len(text) == 2 * 8 and all(".self_attn." in k for k in text) and len(tensors) == len(unet) + len(text)
    info = json.loads(meta[dreambooth_sd.METADATA_KEY])
    assert info["instance_prompt"] == "a sks digit" and info["class_prompt"] == "a digit"
    assert info["base"]["source"] == "folder" and len(info["base"]["unet_sha256"]) == 64
    assert not os.path.isabs(info["base"]["path"]) and str(world["root"]) not in json.dumps(meta)
    metrics = json.loads((dreambooth / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["class_images"] == 4 and len(metrics["history"]) == 8
    assert all(r["prior_loss"] is not None for r in metrics["history"])
    assert len(list((world["root"] / "classes").glob("*.png"))) == 4


def test_dreambooth_lowers_the_eval_loss(dreambooth, world):
    """The evaluation loss (fixed noise and timesteps over the instance pictures) before training, at each
    validation and at the end: the trained adapter denoises them better, and the run's numbers are what the
    adapter file gives in a fresh base (fp32 on the CPU: within 1e-6 relative)."""
    metrics = json.loads((dreambooth / "metrics.json").read_text())
    evals = metrics["evals"]
    assert [e["step"] for e in evals] == [0, 4, 8] and metrics["eval_images"] == 4
    assert metrics["eval_timesteps"] == [62, 187, 312, 437, 562, 687, 812, 937]
    before, after = metrics["eval_loss_before"], metrics["eval_loss_after"]
    assert (before, after) == (evals[0]["eval_loss"], evals[-1]["eval_loss"])
    assert after < 0.9 * before, (before, after)
    file_before, file_after = _fixed_losses(world["base"], dreambooth / "adapter.safetensors", world["instance"],
                                            "a sks digit")
    assert file_before == pytest.approx(before, rel=1e-6) and file_after == pytest.approx(after, rel=1e-6)
    line = next(x for x in (dreambooth / "printed.txt").read_text().splitlines() if x.startswith("eval loss"))
    assert line.startswith(f"eval loss (fixed noise and timesteps): {before:.4f} -> {after:.4f} (steps 0 -> 8; ")


def test_the_file_reproduces_the_trained_model(dreambooth, world):
    """The last checkpoint holds the trained weights as the run had them; the adapter file, loaded into a
    fresh base, gives the same UNet and text-encoder outputs (and ones that differ from the base's)."""
    trained = load_pipeline(str(world["base"])).pipe
    vislora.inject(trained, {"unet.attn": {"rank": 4, "alpha": 4}, "text.attn": {"rank": 4, "alpha": 4}})
    saved = container.read(dreambooth / "checkpoints" / "ckpt-000000008" / "trainable.safetensors")[0]
    assert {name.split(".")[0] for name in saved} == {"unet", "text_encoder"}
    with torch.no_grad():
        for name, value in saved.items():
            component, path = name.split(".", 1)
            dict(getattr(trained, component).named_parameters())[path].copy_(value)
    loaded = load_pipeline(str(world["base"])).pipe
    vislora.load_adapter(loaded, dreambooth / "adapter.safetensors")
    plain = load_pipeline(str(world["base"])).pipe
    g = torch.Generator().manual_seed(0)
    config = plain.unet.config
    x = torch.randn(2, 4, config.sample_size, config.sample_size, generator=g)
    h = torch.randn(2, plain.tokenizer.model_max_length, config.cross_attention_dim, generator=g)
    t = torch.tensor([50, 700])
    ids = plain.tokenizer(["a sks digit"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b, c = (p.unet(x, t, h).sample for p in (trained, loaded, plain))
        ta, tb, tc = (p.text_encoder(ids).last_hidden_state for p in (trained, loaded, plain))
    assert (a - c).abs().max() > 1e-3 and (ta - tc).abs().max() > 1e-4
    assert torch.equal(a, b) and torch.equal(ta, tb)


def test_only_missing_class_images_are_generated(dreambooth, world, tmp_path, capsys):
    folder = world["root"] / "classes"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    assert dreambooth_sd.main(_dreambooth(world, tmp_path / "more", "--num-class-images", "6", "--steps", "1",
                                          "--eval-images", "0")) == 0
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    assert len(after) == 6 and all(after[k] == v for k, v in before.items())
    # --eval-images 0: no evaluation loss; the printed line is the per-step loss's
    metrics = json.loads((tmp_path / "more" / "metrics.json").read_text())
    assert metrics["evals"] == [] and metrics["eval_loss_after"] is None and metrics["eval_images"] == 0
    printed = capsys.readouterr().out.splitlines()
    assert sum(x.startswith("instance loss ") for x in printed) == 1 and not any("eval loss" in x for x in printed)


def test_resume_equals_an_unbroken_run(dreambooth, world, tmp_path):
    out = stopped_before(dreambooth, tmp_path / "resumed", 8)
    assert dreambooth_sd.main(_dreambooth(world, out, *EVERY_4, "--resume")) == 0
    a, b = (container.read(d / "adapter.safetensors")[0] for d in (dreambooth, out))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (dreambooth, out))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in first["history"]] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in second["history"]]
    assert first["evals"] == second["evals"] and len(first["evals"]) == 3  # steps 0 and 4 from the checkpoint


def test_resume_refuses_another_runs_checkpoints(dreambooth, world, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(dreambooth / "checkpoints", out / "checkpoints")
    assert dreambooth_sd.main(_dreambooth(world, out, "--rank", "8", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different training settings" in err[0]


def test_style_with_captions_and_buckets(world, tmp_path):
    out = tmp_path / "style"
    assert style_sd.main(["--model", str(world["base"]), "--data", str(world["style"]), "--trigger", "zxy",
                          "--steps", "12", "--optimizer", "adamw", "--lr", "1e-2", "--batch-size", "2", "--out", str(out), *FAST]) == 0
    meta = container.read(out / "adapter.safetensors")[1]
    info = json.loads(meta[dreambooth_sd.METADATA_KEY])
    assert info["task"] == "style" and info["trigger"] == "zxy"
    assert str(world["root"]) not in json.dumps(meta)  # the data folder's absolute path is not in a shared file
    data = scan_captioned(world["style"], trigger="zxy", warn=False)
    assert sorted(set(data.captions)) == ["zxy, a flat digit", "zxy, a tall digit"]
    sizes = bucket_sizes(32, 4)
    items = load_items(data, sizes)
    shapes = {tuple(x.shape) for x in items.pixels}
    assert len(shapes) == 2 and all(h * w <= 32 * 32 and h != w for _, h, w in shapes)
    # The run's evaluation loss over the 8 style pictures falls, and the adapter file, loaded into a fresh base,
    # gives the same numbers: the file holds the trained model (the style default: LoRA on the UNet's attention,
    # LoCon on its convs).
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["eval_loss_before"], metrics["eval_loss_after"]
    assert metrics["eval_images"] == 8 and after < 0.9 * before, (before, after)
    tensors = container.read(out / "adapter.safetensors")[0]
    assert tensors and all(k.startswith("unet.") and ".lora_" in k for k in tensors)
    assert any(".attn" in k for k in tensors) and any(".resnets.0.conv1." in k for k in tensors)
    file_before, file_after = _fixed_losses(world["base"], out / "adapter.safetensors", world["style"], None, "zxy")
    assert file_before == pytest.approx(before, rel=1e-6) and file_after == pytest.approx(after, rel=1e-6)


def test_two_processes_match_one_with_the_same_global_batch(world, reference, tmp_path):
    """torchrun, 2 CPU processes (gloo) x batch 1 == 1 process x batch 2: each sample's noise and timestep
    follow its place in the global batch, and gradients are averaged."""
    two = tmp_path / "two"
    done = launch(ROOT / "recipes" / "dreambooth_sd.py", _dreambooth(world, two, *SMALL, *KEEP, "--batch-size", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    # Adam divides by the gradients' size, so summation-order differences (1e-7) grow to about 1e-6 here.
    assert adapter_gap(two / "adapter.safetensors", reference) < 1e-5
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert done.stdout.count("adapter:") == 1



def test_fsdp_with_two_processes_matches_one(world, reference, tmp_path):
    """accelerate launch configured for FSDP: the UNet's frozen weights sharded over 2 CPU processes x batch 1,
    class pictures and the text encoder trained too; the adapter 1 process x batch 2 trains."""
    out = tmp_path / "fsdp"
    done = launch(ROOT / "recipes" / "dreambooth_sd.py", _dreambooth(world, out, *SMALL, *KEEP, "--batch-size", "1"),
                  fsdp=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert adapter_gap(out / "adapter.safetensors", reference) < 1e-5
    assert json.loads((out / "metrics.json").read_text())["fsdp"]

def test_sdxl_trains_the_unet_and_both_text_encoders(world, tmp_path):
    """SDXL through the same code: two text encoders (text.attn and text2.attn LoRA), pooled embedding and
    size/crop micro-conditioning; the file holds all three components."""
    from sd_tiny import save_sdxl_pipeline

    base = save_sdxl_pipeline(tmp_path)
    loaded = load_pipeline(str(base))
    assert loaded.arch == "sdxl"
    out = tmp_path / "xl"
    assert dreambooth_sd.main(["--model", str(base), "--instance-data", str(world["instance"]), "--instance-prompt",
                               "a sks digit", "--train-text-encoder", "--steps", "2", "--out", str(out), *FAST]) == 0
    tensors = container.read(out / "adapter.safetensors")[0]
    prefixes = {k.split(".")[0] for k in tensors}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    assert sum(k.startswith("text_encoder_2.") and "lora_A" in k for k in tensors) == 8  # 2 layers x 4 projections
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["last_loss"] < 10 and [e["step"] for e in metrics["evals"]] == [0, 2]  # pooled, time ids
    assert all(0 < e["eval_loss"] < 10 for e in metrics["evals"])


def test_gradient_checkpointing_and_no_cache_train_the_same_adapter(world, reference, tmp_path):
    """Recomputing activations in backward, or encoding every step instead of caching, changes the cost,
    not the training: the same adapter within float rounding."""
    runs = {"checkpointing": ["--gradient-checkpointing"], "no-cache": ["--no-cache"]}
    files = {}
    for name, extra in runs.items():
        assert dreambooth_sd.main(_dreambooth(world, tmp_path / name, *SMALL, *KEEP, "--batch-size", "2", *extra)) == 0
        files[name] = container.read(tmp_path / name / "adapter.safetensors")[0]
    ref = reference
    assert any(v.abs().max() > 1e-4 for k, v in ref.items() if "lora_B" in k)
    for name, got in files.items():
        assert max((got[k] - ref[k]).abs().max().item() for k in ref) < 1e-5, name


def test_bf16_mixed_precision_on_cpu(world, tmp_path):
    out = tmp_path / "bf16"
    assert dreambooth_sd.main(_dreambooth(world, out, "--steps", "2", "--mixed-precision", "bf16")) == 0
    tensors = container.read(out / "adapter.safetensors")[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mixed_precision"] == "bf16" and all(t.dtype == torch.float32 for t in tensors.values())
    assert all(np.isfinite(r["loss"]) for r in metrics["history"])

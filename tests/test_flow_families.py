"""The diffusion recipes on the flow-matching families beyond the shipped SD3 base (tests/test_flow_recipe.py):
tiny config-built Flux.1 (FluxPipeline: CLIP + T5), Flux.2 klein (Flux2KleinPipeline: Qwen3) and Flux.2
(Flux2Pipeline: Mistral3) folders. A few AdamW steps lower the evaluation loss, and the adapter file loads in
diffusers' own `load_lora_weights` with the outputs vislora.load_adapter gives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffusers
import vislora
from dit_pipelines import FAMILY, save
from vislora.diffusion import flow_layout as fl
from vislora.diffusion.flow_text import encode_flow_prompts
from vislora.formats import container
from vislora.recipes import dreambooth_sd, style_sd

CLASSES = ("FluxPipeline", "Flux2KleinPipeline", "Flux2Pipeline")
# 32 px pictures (the tiny bases' default would be 256), a few AdamW steps at a rate the tiny random
# transformers move at, one sample per grid.
FAST = ["--resolution", "32", "--steps", "6", "--optimizer", "adamw", "--lr", "3e-2", "--eval-images", "4",
        "--threads", "1", "--no-progress", "--sample-steps", "2", "--validation-seeds", "0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Four pictures of a dark bar on white, a little apart (32 px)."""
    root = tmp_path_factory.mktemp("flow")
    (root / "bars").mkdir()
    for i in range(4):
        a = np.full((32, 32, 3), 255, np.uint8)
        a[8:24, 12 + i:18 + i] = 0
        Image.fromarray(a).save(root / "bars" / f"{i}.png")
    return root


@pytest.fixture(scope="module", params=CLASSES)
def dreambooth(request, root) -> tuple[str, Path, Path]:
    """(pipeline class, base folder, run folder) of a DreamBooth run on that family's tiny base."""
    cls = request.param
    base = save(cls, root)
    out = root / f"db-{cls}"
    assert dreambooth_sd.main(["--model", str(base), "--instance-data", str(root / "bars"), "--instance-prompt",
                               "a sks bar", "--out", str(out), *FAST]) == 0
    return cls, base, out


def _eval_losses(out: Path) -> tuple[float, float]:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base"]["prediction"] == "flow" and metrics["world_size"] == 1
    return metrics["eval_loss_before"], metrics["eval_loss_after"]


def test_dreambooth_steps_lower_the_eval_loss(dreambooth):
    cls, _, out = dreambooth
    before, after = _eval_losses(out)
    assert after < 0.995 * before, (cls, before, after)
    prefixes = {k.split(".")[0] for k in container.read(out / "adapter.safetensors")[0]}
    # DreamBooth trains the text encoder by default: Flux.1's CLIP; Flux.2's language model has no preset yet.
    assert prefixes == ({"transformer", "text_encoder"} if FAMILY[cls] == "Flux.1" else {"transformer"})


def test_diffusers_loads_the_file_with_the_same_outputs(dreambooth):
    cls, base, out = dreambooth
    pipeline, family = getattr(diffusers, cls), FAMILY[cls]
    ours, theirs, plain = (pipeline.from_pretrained(base) for _ in range(3))
    vislora.load_adapter(ours, out / "adapter.safetensors")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    theirs.load_lora_weights(str(out / "adapter.safetensors"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16 if family == "Flux.2" else 4, 8, 8, generator=g)  # Flux.2: patchified latents
    width = plain.transformer.config.joint_attention_dim
    text = fl.TextInputs(torch.randn(2, 7, width, generator=g),
                         torch.randn(2, 16, generator=g) if family == "Flux.1" else None)
    t = torch.tensor([300.0, 800.0])
    with torch.no_grad():
        a, b, c = (fl.predict(family, p.transformer, x, t, text) for p in (ours, theirs, plain))
        ta, tb = (encode_flow_prompts(p, ["a sks bar"], max_sequence_length=16) for p in (ours, theirs))
    assert (a - c).abs().max() > 1e-3  # the adapter changes the output
    assert (a - b).abs().max() < 1e-5
    assert (ta.hidden - tb.hidden).abs().max() < 1e-5
    if family == "Flux.1":  # CLIP's pooled projection, through its trained LoRA
        assert (ta.pooled - tb.pooled).abs().max() < 1e-5


def test_style_on_flux1_lowers_the_eval_loss(root):
    """The style recipe's default LoCon rank finds no convs in a transformer: LoRA on its attention only."""
    out = root / "style"
    base = root / "FluxPipeline" if (root / "FluxPipeline").exists() else save("FluxPipeline", root)
    assert style_sd.main(["--model", str(base), "--data", str(root / "bars"), "--caption", "a tall bar",
                          "--out", str(out), *FAST]) == 0
    before, after = _eval_losses(out)
    assert after < 0.995 * before, (before, after)
    assert json.loads((out / "metrics.json").read_text())["conv_rank"] == 0
    assert all(k.startswith("transformer.") for k in container.read(out / "adapter.safetensors")[0])

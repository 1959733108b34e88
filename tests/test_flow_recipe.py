"""`vislora dreambooth` on the embedded transformer base (samples/digits_dit, a StableDiffusion3Pipeline): the
shared training loop with the flow-matching family lowers the evaluation loss, resumes bit for bit, and writes
an adapter file diffusers' SD3 loader reads with the same outputs; two processes train what one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vislora.formats import container
from vislora.recipes import dreambooth_sd

from digit_subjects import bold_threes  # noqa: E402
from stopped_runs import stopped_before  # noqa: E402
from two_processes import adapter_gap, launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS_DIT = ROOT / "samples" / "digits_dit"
pytestmark = pytest.mark.skipif(not DIGITS_DIT.exists(), reason="samples/digits_dit is not in this checkout")
FAST = ["--threads", "1", "--no-progress", "--sample-steps", "2", "--validation-seeds", "0", "1"]
# An equivalence: two steps, no evaluation, one sample.
# The empty prompt kept on one sample in 4 of the global batch: in one of the two processes only.
SMALL = ["--steps", "2", "--lr", "1e-3", "--eval-images", "0", "--validation-seeds", "0", "--keep-unconditional", "0.5"]


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return bold_threes(tmp_path_factory.mktemp("subject"))


def _args(subject: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(DIGITS_DIT), "--instance-data", str(subject), "--instance-prompt", "a sks digit",
            "--steps", "8", "--optimizer", "adamw", "--lr", "3e-3",
            "--checkpoint-every", "4", "--out", str(out), *FAST, *extra]


@pytest.fixture(scope="module")
def run(subject, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dit") / "run"
    assert dreambooth_sd.main(_args(subject, out)) == 0
    return out


def test_flow_steps_lower_the_eval_loss(run):
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = metrics["eval_loss_before"], metrics["eval_loss_after"]
    assert after < 0.95 * before, (before, after)
    assert metrics["base"]["arch"] == "sd3" and metrics["base"]["prediction"] == "flow"
    assert metrics["preset"] == ["transformer.attn"]  # the default on a diffusion transformer
    tensors = container.read(run / "adapter.safetensors")[0]
    blocks = [k for k in tensors if k.startswith("transformer.transformer_blocks.")]
    text = [k for k in tensors if k.startswith(("text_encoder.", "text_encoder_2."))]  # DreamBooth's default
    assert blocks and text and len(blocks) + len(text) == len(tensors)


def test_resume_equals_an_unbroken_run(run, subject, tmp_path):
    out = stopped_before(run, tmp_path / "resumed", 8)
    assert dreambooth_sd.main(_args(subject, out, "--resume")) == 0
    a, b = (container.read(d / "adapter.safetensors")[0] for d in (run, out))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (run, out))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in first["history"]] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in second["history"]]


def test_diffusers_loads_the_trained_file_with_the_same_outputs(run):
    import logging

    from diffusers import StableDiffusion3Pipeline

    import vislora

    ours = StableDiffusion3Pipeline.from_pretrained(DIGITS_DIT, torch_dtype=torch.float32)
    vislora.load_adapter(ours, run / "adapter.safetensors")
    theirs = StableDiffusion3Pipeline.from_pretrained(DIGITS_DIT, torch_dtype=torch.float32)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    theirs.load_lora_weights(str(run / "adapter.safetensors"))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300.0, 800.0])
    text, pooled = torch.randn(2, 30, 128, generator=g), torch.randn(2, 128, generator=g)
    with torch.no_grad():
        a = ours.transformer(x, text, pooled, t).sample
        b = theirs.transformer(x, text, pooled, t).sample
        base = StableDiffusion3Pipeline.from_pretrained(DIGITS_DIT, torch_dtype=torch.float32).transformer(
            x, text, pooled, t).sample
    assert (a - base).abs().max() > 1e-4  # the adapter changes the output
    assert (a - b).abs().max() < 1e-5


def test_a_style_on_a_transformer_trains_no_conv(subject, tmp_path, capsys):
    """The style recipe's LoCon default is for a UNet's convs: on a transformer a style trains the blocks'
    attention and feed-forwards (transformer.blocks), and --conv-rank given there is refused in one line."""
    from vislora.recipes import style_sd

    out = tmp_path / "style"
    assert style_sd.main(["--model", str(DIGITS_DIT), "--data", str(subject), "--caption", "a bold digit",
                          "--steps", "2", "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conv_rank"] == 0 and metrics["preset"] == ["transformer.blocks"]
    keys = list(container.read(out / "adapter.safetensors")[0])
    assert all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert any(".ff." in k for k in keys) and any(".attn.to_q." in k for k in keys)
    capsys.readouterr()
    assert style_sd.main(["--model", str(DIGITS_DIT), "--data", str(subject), "--caption", "a bold digit",
                          "--conv-rank", "2", "--steps", "2", "--out", str(tmp_path / "refused"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no convs" in err[0] and not (tmp_path / "refused" / "adapter.safetensors").exists()

@pytest.fixture(scope="module")
def reference(subject, tmp_path_factory) -> dict[str, torch.Tensor]:
    """One process, batch 2, 2 steps: the adapter two processes x batch 1 must train."""
    out = tmp_path_factory.mktemp("dit") / "reference"
    assert dreambooth_sd.main(_args(subject, out, *SMALL, "--batch-size", "2")) == 0
    return container.read(out / "adapter.safetensors")[0]


def test_two_processes_match_one_with_the_same_global_batch(subject, reference, tmp_path):
    """torchrun, 2 CPU processes (gloo) x batch 1 == 1 process x batch 2 on the SD3 base: the transformer
    through its distributed wrapper, the three text encoders' gradients averaged by hand."""
    two = tmp_path / "two"
    done = launch(ROOT / "recipes" / "dreambooth_sd.py", _args(subject, two, *SMALL, "--batch-size", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    # Rounding only: the processes' batches differ in size (one holds the empty-prompt sample), and AdamW's
    # first steps divide by the gradients' size. A sample weighed wrongly would differ by about the lr (1e-3).
    assert adapter_gap(two / "adapter.safetensors", reference) < 2e-5
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2


def test_fsdp_with_two_processes_matches_one(subject, reference, tmp_path):
    """accelerate launch configured for FSDP, 2 CPU processes (gloo) x batch 1: the frozen transformer sharded,
    whole again for an evaluation and a sample grid between the steps; the same adapter as one process."""
    out = tmp_path / "fsdp"
    done = launch(ROOT / "recipes" / "dreambooth_sd.py",
                  _args(subject, out, *SMALL, "--batch-size", "1", "--eval-images", "2", "--validate-every", "1"),
                  fsdp=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert adapter_gap(out / "adapter.safetensors", reference) < 2e-5  # rounding, as with data parallel above
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fsdp"] and metrics["world_size"] == 2 and [e["step"] for e in metrics["evals"]] == [0, 1, 2]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000001.png", "step-000002.png"]

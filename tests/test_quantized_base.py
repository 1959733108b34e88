"""`--quantize-base int8`: the recipe trains a LoRA on the embedded SD3 base (samples/digits_dit) with its
transformer quantized by torchao through diffusers' TorchAoConfig. The eval loss falls; the file has the same
keys, shapes and dtypes as a run on the plain base; it loads on the plain base and changes its output. The
adapter layer runs beside a quantized Linear without touching its weight, and refuses to merge into it; the
quantized layers keep no dense weight for backward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vislora
from vislora.errors import AdapterCompatError, AdapterStateError
from vislora.formats import container
from vislora.layers import AdapterLayer, quantized
from vislora.recipes import dreambooth_sd

from digit_subjects import bold_threes  # noqa: E402

torchao = pytest.importorskip("torchao")

ROOT = Path(__file__).resolve().parents[1]
DIGITS_DIT = ROOT / "samples" / "digits_dit"
FAST = ["--threads", "1", "--no-progress", "--sample-steps", "1", "--validation-seeds", "0", "--eval-images", "6"]


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return bold_threes(tmp_path_factory.mktemp("subject"))


def _args(subject: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(DIGITS_DIT), "--instance-data", str(subject), "--instance-prompt", "a sks digit",
            "--steps", "6", "--optimizer", "adamw", "--lr", "3e-3", "--no-train-text-encoder", "--out", str(out),
            *FAST, *extra]


@pytest.fixture(scope="module")
def runs(subject, tmp_path_factory) -> dict[str, Path]:
    """The same run on the int8 base (with gradient checkpointing: recomputed blocks through the lean
    backward) and on the plain base."""
    if not DIGITS_DIT.exists():
        pytest.skip("samples/digits_dit is not in this checkout")
    root = tmp_path_factory.mktemp("quantized")
    done = {}
    for name, extra in {"int8": ["--quantize-base", "int8", "--gradient-checkpointing"], "plain": []}.items():
        assert dreambooth_sd.main(_args(subject, root / name, *extra)) == 0
        done[name] = root / name
    return done


def test_the_quantized_run_learns_and_records_its_base(runs):
    metrics = json.loads((runs["int8"] / "metrics.json").read_text())
    before, after = metrics["eval_loss_before"], metrics["eval_loss_after"]
    assert after < 0.9 * before, (before, after)
    assert metrics["base"]["quantized"] == {"scheme": "int8", "library": "torchao", "version": torchao.__version__}
    assert "quantized" not in json.loads((runs["plain"] / "metrics.json").read_text())["base"]
    settings = json.loads((runs["int8"] / "run.json").read_text())["settings"]
    assert settings["quantize_base"] == "int8"  # part of the run's identity: --resume on another base is refused


def test_the_file_has_the_plain_runs_layout(runs):
    (q, q_meta), (p, p_meta) = (container.read(runs[n] / "adapter.safetensors")[:2] for n in ("int8", "plain"))
    assert q.keys() == p.keys() and len(q) > 0
    assert all(q[k].shape == p[k].shape and q[k].dtype == p[k].dtype == torch.float32 for k in q)
    assert any(not torch.equal(q[k], p[k]) for k in q)  # trained on another base: not the same numbers


def test_the_file_loads_on_the_plain_base_and_changes_its_output(runs):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(DIGITS_DIT, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300.0, 800.0])
    text, pooled = torch.randn(2, 30, 128, generator=g), torch.randn(2, 128, generator=g)
    with torch.no_grad():
        before = pipe.transformer(x, text, pooled, t).sample
        vislora.load_adapter(pipe, runs["int8"] / "adapter.safetensors")
        after = pipe.transformer(x, text, pooled, t).sample
    assert (after - before).abs().max() > 1e-3


def _int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model's Linears quantized by torchao (int8 weights, one scale per row), frozen."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())
    return model.requires_grad_(False)


def test_the_adapter_runs_beside_a_quantized_linear_and_never_merges_into_it():
    torch.manual_seed(0)
    base = _int8(torch.nn.Sequential(torch.nn.Linear(32, 48)))[0]
    assert quantized(base.weight) and not quantized(torch.nn.Linear(2, 2).weight)
    layer = AdapterLayer(base)
    slot = layer.new_slot("lora", 4, 4.0)
    torch.nn.init.normal_(slot.params["up"])
    layer.add("default", slot)
    x = torch.randn(5, 32, requires_grad=True)
    y = layer(x)
    expected = base(x) + (x @ slot.params["down"].T) @ slot.params["up"].T  # scale 1
    assert (y - expected).abs().max() < 1e-5 and (y - base(x)).abs().max() > 1e-2
    y.square().sum().backward()
    assert slot.params["up"].grad is not None and x.grad is not None
    weight = base.weight
    with pytest.raises(AdapterStateError, match="quantized"):
        layer.merge(["default"])
    with pytest.raises(AdapterStateError, match="1 layer.* quantized base weight"):
        vislora.merge(torch.nn.Sequential(layer))
    with pytest.raises(AdapterStateError, match="quantized"):
        layer.weight
    assert base.weight is weight and not layer.merged
    with pytest.raises(AdapterCompatError, match="DoRA"):
        layer.new_slot("lora", 4, 4.0, dora=True)


def test_only_the_denoiser_is_quantized_and_lean():
    from vislora.diffusion.bases import load_pipeline
    from vislora.diffusion.quantize import LeanQuantizedLinear

    pipe = load_pipeline(str(DIGITS_DIT), quantize="int8").pipe
    linears = [m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is LeanQuantizedLinear and quantized(m.weight) for m in linears)
    assert not any(quantized(p) for name in ("text_encoder", "vae") for p in getattr(pipe, name).parameters())


@pytest.mark.parametrize("autocast", [False, True])
def test_lean_backward_gives_autograds_input_gradient_without_keeping_the_weight(autocast):
    import copy

    from vislora.diffusion.quantize import lean_backward

    plain = _int8(torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 16)))
    lean = copy.deepcopy(plain)
    assert lean_backward(lean) == 2 and lean.state_dict().keys() == plain.state_dict().keys()
    grads, kept = [], []
    for model in (plain, lean):
        x = torch.randn(6, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = model(x)
        y.float().square().sum().backward()
        grads.append(x.grad)
        kept.append(shapes)
    assert (32, 48) in kept[0] and (48, 16) in kept[0]  # autograd keeps each dense weight (transposed)
    assert not any(len(s) == 2 and s[0] != 6 for s in kept[1])  # lean: activations only
    tolerance = 1e-2 if autocast else 1e-6  # bf16 rounds the two products differently
    assert (grads[0] - grads[1]).abs().max() <= tolerance * grads[0].abs().max()


@pytest.mark.parametrize("extra, words", [
    (["--quantize-base", "int3"], "--quantize-base int3: must be one of int8, nf4"),
    (["--quantize-base", "int8", "--dora"], "--dora with --quantize-base int8"),
])
def test_bad_quantization_flags_are_one_line(subject, tmp_path, capsys, extra, words):
    assert dreambooth_sd.main(_args(subject, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything was loaded or written


def test_a_missing_library_or_gpu_is_named_with_its_fix(monkeypatch):
    import importlib.util

    from vislora.diffusion import quantize

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    assert quantize.quantizer_rule("int8") == "needs torchao, which is not installed: pip install 'vislora[quantized]'"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # bitsandbytes "installed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA GPU only" in quantize.quantizer_rule("nf4")

"""Bad input to the Stable Diffusion recipes: one clear line naming the file or flag before training starts,
or a counted warning; base loading (folders, pickles refused); preset counts on SD1.5 and SDXL UNets built
on the meta device; the DreamBooth file in diffusers' own loader."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sd_tiny import build_pipeline, save_pipeline

import vislora
from vislora.diffusion.captions import SmallImageWarning, scan_captioned
from vislora.images import DatasetError, SkippedImageWarning
from vislora.formats import container
from vislora.recipes import dreambooth_sd, style_sd
from vislora.diffusion.bases import BaseModelError, load_pipeline
from vislora.diffusion.pipeline import check_prompts
from vislora.targets import TargetRule, resolve

FAST = ["--threads", "1", "--no-progress", "--sample-steps", "2", "--validation-seeds", "0", "--steps", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("sdbase"))


def _images(folder: Path, n: int = 2, size: tuple[int, int] = (32, 32)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def _one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _db(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(base), "--instance-data", str(data), "--instance-prompt", "a sks digit", "--out", str(out),
            *FAST, *extra]


@pytest.mark.parametrize("problem, message", [
    ("missing", "--instance-data"),
    ("no-images", "no image files"),
    ("all-unreadable", "none of its 2 images is readable"),
    ("text2-on-sd1", "--preset text2.attn"),
    ("vit-on-sd", "--preset vit.attn"),
    ("prior-without-prompt", "--prior-preservation needs --class-prompt"),
    ("odd-resolution", "--resolution 30"),
    ("negative-eval-images", "--eval-images -1: must be a whole number >= 0"),
])
def test_unusable_input_is_one_error_line_before_training(base, tmp_path, capsys, problem, message):
    data = tmp_path / "data"
    extra: list[str] = []
    if problem == "no-images":
        data.mkdir()
        (data / "notes.md").write_text("x")
    elif problem == "all-unreadable":
        data.mkdir()
        for i in range(2):
            (data / f"{i}.png").write_bytes(b"not a png")
    elif problem != "missing":
        _images(data)
    extra = {"text2-on-sd1": ["--preset", "text2.attn"], "vit-on-sd": ["--preset", "vit.attn"],
             "prior-without-prompt": ["--prior-preservation"], "odd-resolution": ["--resolution", "30"],
             "negative-eval-images": ["--eval-images", "-1"]}.get(problem, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert dreambooth_sd.main(_db(base, data, tmp_path / "out", *extra)) == 2
    assert message in _one_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing was started, nothing half-written


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    data = _images(tmp_path / "d", 3)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.warns(SkippedImageWarning) as caught:
        found = scan_captioned(data, caption="x")
    assert len(found) == 3 and len(found.skipped) == 1
    assert any("broken.png" in str(w.message) for w in caught) and any("1 files skipped" in str(w.message)
                                                                        for w in caught)


def test_captions_empty_missing_and_small_images(tmp_path):
    data = _images(tmp_path / "d", 3, size=(20, 24))
    (data / "0.txt").write_text("a digit")
    (data / "1.txt").write_text("  \n")
    with pytest.raises(DatasetError, match=r"1\.txt: empty caption file"):
        scan_captioned(data, flag="--data")
    (data / "1.txt").write_text("another digit")
    with pytest.raises(DatasetError, match=r"--data .*1 images have no caption.*2\.png"):
        scan_captioned(data, flag="--data")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "2.png", "text": "from jsonl"}) + "\n")
    with pytest.warns(SmallImageWarning, match="3 of 3 images are smaller than the training resolution 32"):
        found = scan_captioned(data, flag="--data", min_size=32)
    assert found.captions == ["a digit", "another digit", "from jsonl"]
    assert scan_captioned(data, caption="one for all", trigger="zq").captions == ["zq, one for all"] * 3


def test_style_without_captions_is_one_error_line(base, tmp_path, capsys):
    data = _images(tmp_path / "d", 2)
    assert style_sd.main(["--model", str(base), "--data", str(data), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "2 images have no caption" in _one_error(capsys)


def test_long_prompts_are_a_warning_that_counts_the_cut_tokens(base, tmp_path):
    pipe = load_pipeline(str(base)).pipe
    long = "a " + "very " * 10 + "long prompt"
    (line,) = check_prompts(pipe, {"--instance-prompt": long, "--class-prompt": "a digit"})
    tokens = len(pipe.tokenizer(long)["input_ids"])
    limit = pipe.tokenizer.model_max_length
    assert tokens > limit and line.startswith("--instance-prompt") and f"{tokens - limit} tokens were cut" in line


def test_pickled_bases_are_refused(base, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(vislora.UnsafeFormatError, match="model.ckpt"):
        load_pipeline(str(ckpt))
    raw = tmp_path / "model.safetensors"
    raw.write_bytes(b"\x80\x02}q\x00." + b"\0" * 64)
    with pytest.raises(vislora.UnsafeFormatError, match="raw pickle"):
        load_pipeline(str(raw))
    folder = tmp_path / "pickled"
    build_pipeline(tmp_path).save_pretrained(folder, safe_serialization=False)
    with pytest.raises(vislora.UnsafeFormatError, match=r"unet.*\.bin"):
        load_pipeline(str(folder))
    with pytest.raises(BaseModelError, match="no such file or folder"):
        load_pipeline(str(tmp_path / "missing.safetensors"))


def test_loads_a_folder_and_reads_the_prediction_type(tmp_path):
    folder = save_pipeline(tmp_path, prediction="v_prediction")
    loaded = load_pipeline(str(folder))
    assert loaded.prediction == "v_prediction" and loaded.arch == "custom"
    assert len(loaded.record["unet_sha256"]) == 64


# -- preset counts on the real architectures (meta device: no memory, no download) ---------------------------
SD15 = dict(cross_attention_dim=768, sample_size=64)
SD2 = dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, sample_size=96)
SDXL = dict(block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            use_linear_projection=True, sample_size=128)
COUNTS = {  # preset -> (SD1.5 with 860 M parameters, SDXL with 2.57 G) modules; SD 2.x has SD1.5's layout
    "unet.cross_attn": (64, 280), "unet.attn": (128, 560), "unet.attn_ff": (160, 700), "unet.conv": (96, 71),
    "unet.all": (278, 788),
}


@pytest.mark.parametrize("preset", sorted(COUNTS))
def test_preset_counts_on_sd15_sd2_and_sdxl(preset):
    from diffusers import UNet2DConditionModel

    sd15, sdxl = COUNTS[preset]
    for config, expected in ((SD15, sd15), (SD2, sd15), (SDXL, sdxl)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        targets, _ = resolve(unet, [TargetRule(preset)])
        assert len(targets) == expected, (config.get("cross_attention_dim"), preset, len(targets))


def test_fused_originals_cost_on_sd15_in_fp16():
    """docs/blending.md's figure: fused, the bank keeps one original weight per merged layer, in the model's dtype. On
    SD1.5 in fp16 that is 1,635 MiB for unet.all (857 M weights) and 178 MiB for unet.attn (94 M)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15).to(torch.float16)
    for preset, weights, mib in (("unet.all", 857, 1635), ("unet.attn", 94, 178)):
        targets, _ = resolve(unet, [TargetRule(preset)])
        n = sum(t.module.weight.numel() for t in targets)
        assert (round(n / 1e6), round(n * 2 / 2**20)) == (weights, mib), preset


def test_fused_bank_keeps_exactly_one_original_per_merged_layer():
    from conftest import tiny_unet

    unet = tiny_unet().to(torch.float16)
    vislora.inject(unet, "unet.all", rank=2, init="random", name="a")
    bank = vislora.AdapterBank(unet)
    bank.fuse()
    layers = [m for m in unet.modules() if isinstance(m, vislora.AdapterLayer)]
    assert layers and all(m._pristine is not None and m._pristine.dtype == torch.float16 for m in layers)
    assert all(m._pristine.shape == m.base_layer.weight.shape for m in layers)
    assert all(m._pristine.data_ptr() != m.base_layer.weight.data_ptr() for m in layers)


def test_lbw_blocks_of_sd15_and_sdxl_are_the_extension_s():
    """The A1111 block ids vislora gives each adapted layer of a real-shaped UNet are exactly the ids of the
    extension's lists: attention layers fill the 17-value (SD1.5) and 12-value (SDXL) LoRA lists, and every
    layer of unet.all falls in the 26-value / 20-value LyCORIS lists."""
    from diffusers import UNet2DConditionModel

    from vislora.targets.blocks import LBW_LAYOUTS, ldm_block

    for config, lora, lycoris in ((SD15, 17, 26), (SDXL, 12, 20)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        layers = unet.config.layers_per_block
        for preset, n in (("unet.attn", lora), ("unet.all", lycoris)):
            targets, _ = resolve(unet, [TargetRule(preset)])
            ids = {ldm_block(t.path, layers) for t in targets} - {None}
            assert ids <= set(LBW_LAYOUTS[n]) - {"BASE"}, (n, sorted(ids - set(LBW_LAYOUTS[n])))
            if preset == "unet.attn":
                assert ids == set(LBW_LAYOUTS[n]) - {"BASE"}, (n, sorted(ids))


def test_the_architecture_is_read_from_the_pipeline(tmp_path):
    """SD 1.x / 2.x by the UNet's cross-attention width, SDXL by its second text encoder; and a single-file
    checkpoint's class from its header alone (SDXL's has the second encoder's `conditioner.embedders.1.`)."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from safetensors.torch import save_file

    from vislora.diffusion.bases import _single_file_class, architecture

    for config, arch in ((SD15, "sd1"), (SD2, "sd2"), (SDXL, "custom")):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        assert architecture(SimpleNamespace(unet=unet)) == arch
    assert architecture(SimpleNamespace(unet=unet, text_encoder_2=object())) == "sdxl"
    for name, text_key in (("sd", "cond_stage_model.transformer.x"), ("sdxl", "conditioner.embedders.1.model.x")):
        save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1), text_key: torch.zeros(1)},
                  tmp_path / f"{name}.safetensors")
    assert _single_file_class(tmp_path / "sd.safetensors") is StableDiffusionPipeline
    assert _single_file_class(tmp_path / "sdxl.safetensors") is StableDiffusionXLPipeline


def test_text2_presets_reach_the_second_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    class TwoEncoders:  # what components() reads from an SDXL pipeline
        def __init__(self):
            config = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    vocab_size=50, max_position_embeddings=8)
            self.components = {"text_encoder": CLIPTextModel(config), "text_encoder_2": CLIPTextModelWithProjection(config)}

    pipe = TwoEncoders()
    report = vislora.inject(pipe, ["text.attn", "text2.attn"], rank=2)
    assert sum(m.startswith("text_encoder_2.") for m in report.matched) == 8
    assert sum(m.startswith("text_encoder.") for m in report.matched) == 8


# -- diffusers' loader ---------------------------------------------------------------------------------------
def _same_in_diffusers(base: Path, adapter: Path) -> torch.Tensor:
    """The file through vislora.load_adapter and through diffusers' load_lora_weights: the same UNet and text
    encoder outputs; returns how far the text encoder moved from the base's."""
    ours, theirs, plain = (load_pipeline(str(base)).pipe for _ in range(3))
    vislora.load_adapter(ours, adapter)
    theirs.load_lora_weights(str(adapter))
    g = torch.Generator().manual_seed(0)
    x, h, t = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 32, 32, generator=g), torch.tensor([50, 700])
    ids = plain.tokenizer(["a sks digit"], padding="max_length", max_length=plain.tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        a, b, c = (p.unet(x, t, h).sample for p in (ours, theirs, plain))
        ta, tb, tc = (p.text_encoder(ids).last_hidden_state for p in (ours, theirs, plain))
    assert (a - c).abs().max() > 1e-4
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)
    return (ta - tc).abs().max()


def test_dreambooth_file_loads_in_diffusers_with_our_outputs(base, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "out"
    assert dreambooth_sd.main(_db(base, _images(tmp_path / "d", 2), out, "--optimizer", "adamw", "--lr", "1e-2",
                                  "--no-train-text-encoder")) == 0
    assert _same_in_diffusers(base, out / "adapter.safetensors") == 0  # the text encoder was not trained


def test_locon_and_text_encoder_file_loads_in_diffusers_with_our_outputs(base, tmp_path):
    """LoCon on the UNet convs (k x k down, 1 x 1 up: PEFT's Conv2d LoRA) and a text-encoder LoRA, trained with
    min-SNR, noise offset and gradient accumulation: diffusers reads the whole file, not only its attention."""
    pytest.importorskip("peft")
    out = tmp_path / "out"
    assert dreambooth_sd.main(_db(base, _images(tmp_path / "d", 2), out, "--optimizer", "adamw", "--lr", "1e-2", "--conv-rank", "2",
                                  "--conv-alpha", "1", "--train-text-encoder", "--snr-gamma", "5",
                                  "--noise-offset", "0.05", "--grad-accum", "2")) == 0
    tensors = container.read(out / "adapter.safetensors")[0]
    assert any(".resnets.0.conv1.lora_A" in k for k in tensors) and any(k.startswith("text_encoder.") for k in tensors)
    assert _same_in_diffusers(base, out / "adapter.safetensors") > 1e-4


def test_the_recipe_warns_of_cut_prompts_and_small_images_once_each(base, tmp_path):
    """In a run, not only in the checks: a counted warning per long prompt (the validation ones too) and one
    for the images below the training resolution; the run still trains."""
    long = "a " + "very " * 40 + "long prompt"
    small = _images(tmp_path / "d", 2, size=(16, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dreambooth_sd.main(_db(base, small, tmp_path / "out", "--instance-prompt", long,
                                      "--validation-prompt", "a digit", long)) == 0
    lines = [str(w.message) for w in caught]
    cut = [x for x in lines if "tokens were cut" in x]
    assert sorted(x.split(":")[0] for x in cut) == ["--instance-prompt", "--validation-prompt 2"], cut
    assert sum("2 of 2 images are smaller than the training resolution 32" in x for x in lines) == 1, lines
    assert (tmp_path / "out" / "adapter.safetensors").is_file()


def test_8bit_adam_is_bitsandbytes_or_a_clear_error(base, tmp_path, capsys, monkeypatch):
    """--use-8bit-adam: without bitsandbytes, one line naming the flag and the install, and no adapter written;
    with it, the run's optimizer is its AdamW8bit (a stand-in here: the real one needs a GPU)."""
    import sys
    from types import SimpleNamespace

    data = _images(tmp_path / "d", 2)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    assert dreambooth_sd.main(_db(base, data, tmp_path / "none", "--use-8bit-adam")) == 2
    line = _one_error(capsys)
    assert "--use-8bit-adam" in line and "pip install bitsandbytes" in line
    assert not (tmp_path / "none" / "adapter.safetensors").exists()

    made = []

    class AdamW8bit(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            made.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setitem(sys.modules, "bitsandbytes", SimpleNamespace(optim=SimpleNamespace(AdamW8bit=AdamW8bit)))
    assert dreambooth_sd.main(_db(base, data, tmp_path / "out", "--use-8bit-adam", "--lr", "2e-3")) == 0
    assert made == [{"lr": 2e-3, "weight_decay": 1e-2}]
    assert (tmp_path / "out" / "adapter.safetensors").is_file()


def test_the_cli_runs_both_recipes(base, tmp_path, capsys):
    from vislora import cli

    assert cli.main(["dreambooth", *_db(base, tmp_path / "none", tmp_path / "out")]) == 2
    assert "--instance-data" in _one_error(capsys) and not (tmp_path / "out").exists()
    assert cli.main(["style", "--model", str(base), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in _one_error(capsys)

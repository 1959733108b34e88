"""The file tools behind `vislora inspect / convert / merge / resize / extract`, on config-built models."""

from __future__ import annotations

import json

import pytest
import torch

import vislora
from conftest import images, tiny_vit
from kohya_files import file_for
from sd_models import sd15_pipeline, sd15_unet, sdxl_unet, unet_inputs
from vislora import cli
from vislora.formats import container
from vislora.io import adapter_file
from vislora.tools import common, inspect, lowrank, merge, resize
from vislora.tools.extract import extract

TOL = dict(rtol=1e-5, atol=1e-5)


def _outputs(pipe, inputs, ids):
    with torch.no_grad():
        return pipe.unet(**inputs).sample, pipe.text_encoder(ids).last_hidden_state


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """An SD1.5-shaped pipeline with LoRA (attention, text encoder) and LoCon (convs), saved in vislora's format."""
    tmp = tmp_path_factory.mktemp("adapted")
    pipe = sd15_pipeline()
    vislora.inject(pipe, {"unet.attn": {"rank": 4, "alpha": 2}, "unet.conv": {"rank": 2, "alpha": 4},
                          "text.attn": {"rank": 4, "alpha": 8}}, init="random")
    inputs, ids = unet_inputs(pipe.unet), torch.randint(3, 99, (1, 8))
    return vislora.save_adapter(pipe, tmp / "a.safetensors"), inputs, ids, _outputs(pipe, inputs, ids)


def test_convert_between_every_format_keeps_outputs(tmp_path, adapted):
    path, inputs, ids, (want_unet, want_te) = adapted
    base_unet, _ = _outputs(sd15_pipeline(), inputs, ids)
    assert (want_unet - base_unet).abs().max() > 1e-3
    chain = ["kohya", "diffusers", "lycoris", "vislora"]
    src = path
    for i, to in enumerate(chain):
        dst = tmp_path / f"{i}-{to}.safetensors"
        assert cli.main(["convert", str(src), str(dst), "--to", to]) == 0
        fresh = sd15_pipeline()
        vislora.load_adapter(fresh, dst)
        got_unet, got_te = _outputs(fresh, inputs, ids)
        torch.testing.assert_close(got_unet, want_unet, **TOL)
        torch.testing.assert_close(got_te, want_te, **TOL)
        src = dst


def test_vit_peft_folder_loads_in_peft_and_converts_back(tmp_path):
    peft = pytest.importorskip("peft")
    vit = tiny_vit()
    vislora.inject(vit, {"vit.attn": {"rank": 4, "alpha": 8}, "vit.mlp": {"rank": 2, "alpha": 2}}, init="random")
    x = images()
    with torch.no_grad():
        want = vit(x)
    src = vislora.save_adapter(vit, tmp_path / "v.safetensors")
    assert cli.main(["convert", str(src), str(tmp_path / "peft"), "--to", "peft"]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["auto_mapping"]["base_model_class"] == "VisionTransformer" and config["peft_type"] == "LORA"
    theirs = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), want, **TOL)
    assert cli.main(["convert", str(tmp_path / "peft"), str(tmp_path / "back.safetensors"), "--to", "kohya"]) == 0
    ours = tiny_vit()
    vislora.load_adapter(ours, tmp_path / "back.safetensors")  # lycoris_ names resolve against the live ViT
    with torch.no_grad():
        torch.testing.assert_close(ours(x), want, **TOL)


def test_merge_exact_equals_the_blend_of_its_inputs(tmp_path, adapted):
    path_a, inputs, ids, _ = adapted
    pipe = sd15_pipeline()
    torch.manual_seed(5)
    vislora.inject(pipe, {"unet.attn": {"rank": 2, "alpha": 1}}, init="random")
    path_b = vislora.formats.write(tmp_path / "b-kohya.safetensors", adapter_file(pipe), "kohya")
    both = sd15_pipeline()
    vislora.load_adapter(both, path_a, name="a", strength=0.6)
    vislora.load_adapter(both, path_b, name="b", strength=0.4)
    want = _outputs(both, inputs, ids)
    assert cli.main(["merge", f"{path_a}:0.6", f"{path_b}:0.4", "-o", str(tmp_path / "c.safetensors")]) == 0
    merged = sd15_pipeline()
    vislora.load_adapter(merged, tmp_path / "c.safetensors")
    got = _outputs(merged, inputs, ids)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    # by SVD at a rank that holds the blend exactly (4 + 2): the same, with the error reported near 0
    a, b = common.read(path_a), common.read(path_b)
    svd, report = merge.merge([(a, 0.6), (b, 0.4)], rank=6)
    assert report.max_rel_error < 1e-6
    vislora.formats.write(tmp_path / "svd.safetensors", svd)
    again = sd15_pipeline()
    vislora.load_adapter(again, tmp_path / "svd.safetensors")
    torch.testing.assert_close(_outputs(again, inputs, ids)[0], want[0], rtol=1e-4, atol=1e-4)


def test_resize_reports_its_error_and_stays_within_it(adapted):
    path, *_ = adapted
    adapter = common.read(path)
    small, report = resize.resize(adapter, rank=1)
    assert 0 < report.max_rel_error < 1
    for name, w in adapter.modules.items():
        d, r = common.delta(w), common.delta(small.modules[name])
        actual = float((d - r).norm() / d.norm())
        assert actual == pytest.approx(report.errors[name], rel=1e-4, abs=1e-6)
    kept, report = resize.resize(adapter, energy=0.9)
    assert report.max_rel_error <= 0.1 ** 0.5 + 1e-9
    assert all(new <= old for old, new in report.ranks.values())


def test_extract_recovers_a_planted_low_rank_difference(tmp_path):
    base = sd15_unet()
    tuned = sd15_unet()
    g = torch.Generator().manual_seed(3)
    planted = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "mid_block.attentions.0.proj_in",
               "up_blocks.1.resnets.0.conv1"]
    with torch.no_grad():
        for path in planted:
            w = tuned.get_submodule(path).weight
            flat = torch.randn(w.shape[0], 3, generator=g) @ torch.randn(3, w[0].numel(), generator=g) * 0.01
            w += flat.reshape(w.shape)
    container.write(tmp_path / "base.safetensors", base.state_dict())
    container.write(tmp_path / "tuned.safetensors", tuned.state_dict())
    adapter, report = extract(str(tmp_path / "base.safetensors"), str(tmp_path / "tuned.safetensors"), rank=3)
    assert sorted(adapter.modules) == sorted(planted) and report.max_rel_error < 1e-6
    assert adapter.modules["up_blocks.1.resnets.0.conv1"].kind == "locon"
    assert cli.main(["extract", "--base", str(tmp_path / "base.safetensors"), "--tuned",
                     str(tmp_path / "tuned.safetensors"), "--rank", "3", "-o", str(tmp_path / "x.safetensors")]) == 0
    vislora.load_adapter(base, tmp_path / "x.safetensors")
    inputs = unet_inputs(base)
    with torch.no_grad():
        torch.testing.assert_close(base(**inputs).sample, tuned(**inputs).sample, rtol=1e-4, atol=1e-5)


def test_inspect_names_format_base_blocks_and_escapes_metadata(tmp_path, capsys):
    xl = sdxl_unet((1, 1, 1))
    data, _ = file_for(xl, {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": ("lora", None),
                            "up_blocks.0.upsamplers.0.conv": ("loha", None)}, "ldm")
    tensors, _ = container.parse(data, "x")
    hostile = "\x1b[31mred\x1b[0m\r\n" + "x" * 500
    container.write(tmp_path / "xl.safetensors", tensors, {"ss_training_comment": hostile, "ss_network_dim": "4"})
    info = inspect.describe(tmp_path / "xl.safetensors")
    assert info["format"] == "kohya" and info["base"]["name"] == "SDXL" and info["base"]["cross_attention_width"] == 2048
    assert info["kinds"] == {"lora": 1, "loha": 1} and info["blocks"] == {"IN04": 1, "OUT02": 1}
    comment = info["metadata"]["ss_training_comment"]
    assert "\x1b" not in comment and "\\x1b" in comment and "(+" in comment and len(comment) < 220
    assert cli.main(["inspect", str(tmp_path / "xl.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["modules"] == 2
    assert cli.main(["inspect", str(tmp_path / "xl.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "base: SDXL" in out and "\x1b" not in out


def test_inspect_shows_training_prompts_and_line_breaks(tmp_path, capsys):
    """The recipe's prompts each on a line of their own (not cut off inside the record's JSON); a metadata
    value's line breaks as real ones, indented under it; other control characters still escaped."""
    unet = sdxl_unet((1, 1, 1))
    data, _ = file_for(unet, {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": ("lora", None)}, "ldm")
    tensors, _ = container.parse(data, "x")
    record = {"task": "dreambooth", "instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog",
              "base": {"path": "x" * 300, "sha256": "0" * 64}, "steps": 400}
    container.write(tmp_path / "a.safetensors", tensors, {"vislora.diffusion": json.dumps(record, sort_keys=True),
                                                          "modelspec.trigger_phrase": "sks\x1b[2J",
                                                          "ss_training_comment": "line one\nline two"})
    assert cli.main(["inspect", str(tmp_path / "a.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  instance prompt: a photo of sks dog" in lines and "  class prompt: a photo of a dog" in lines
    assert "  trigger: sks\\x1b[2J" in lines  # the escape sequence shown, not obeyed
    i = lines.index("    ss_training_comment: line one")
    assert lines[i + 1] == "      line two" and not any("\\x0a" in line for line in lines)
    assert cli.main(["inspect", str(tmp_path / "a.safetensors"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompts"] == {"instance prompt": "a photo of sks dog", "class prompt": "a photo of a dog",
                                "trigger": "sks\\x1b[2J"}
    assert shown["metadata"]["ss_training_comment"] == "line one\nline two"
    assert inspect.prompts({"vislora.diffusion": "{\"a\": " * 10_000}) == {}  # deep nesting: no prompts, no crash


def test_tool_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04junk")
    assert cli.main(["inspect", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pickle" in err and err.count("\n") == 1


def test_energy_rank_rule():
    s = torch.tensor([3.0, 2.0, 1.0])
    assert lowrank.rank_for_energy(s, 9 / 14) == 1 and lowrank.rank_for_energy(s, 0.7) == 2

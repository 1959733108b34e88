"""kohya / LyCORIS files on config-built SD1.5- and SDXL-shaped models: every kind loads as LyCORIS' own
math gives it, our kohya output loads in diffusers' load_lora_weights as kohya's own files do, strict
matching by default, and a file for another base is refused before anything changes."""

from __future__ import annotations

import warnings

import pytest
import torch

import vislora
from kohya_files import CONV_KINDS, LINEAR_KINDS, file_for
from sd_models import sd15_pipeline, sd15_unet, sdxl_pipeline, sdxl_unet, unet_inputs
from vislora import AdapterCompatError, AdapterFormatError, AdapterStateError, UnsafeFormatError
from vislora.formats import container, kohya

ly_loha = pytest.importorskip("lycoris.functional.loha")
from lycoris.functional import general as ly_general  # noqa: E402
from lycoris.functional import locon as ly_locon  # noqa: E402
from lycoris.functional import lokr as ly_lokr  # noqa: E402

TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # Linear [32, 768]
CONV1 = "down_blocks.0.resnets.0.conv1"  # Conv2d [32, 32, 3, 3]


@pytest.fixture(scope="module")
def unet():
    return sd15_unet()


def _lycoris_delta(parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """W' - W for one module, by lycoris-lora's functions and the consumers' scale rules (spec section 4)."""
    g = lambda k: parts.get(k)  # noqa: E731
    alpha = float(parts["alpha"]) if "alpha" in parts else None
    if "lora_down.weight" in parts:
        r = parts["lora_down.weight"].shape[0]
        d = ly_locon.diff_weight(g("lora_down.weight"), g("lora_up.weight"), g("lora_mid.weight"),
                                 gamma=alpha / r, backend="torch")
    elif "hada_w1_a" in parts:
        r = parts["hada_w1_b"].shape[0]
        d = ly_loha.diff_weight(g("hada_w1_b"), g("hada_w1_a"), g("hada_w2_b"), g("hada_w2_a"), g("hada_t1"),
                                g("hada_t2"), gamma=alpha / r, backend="torch")
    elif any(k.startswith("lokr") for k in parts):
        rank = parts["lokr_w2_b"].shape[0] if "lokr_w2_b" in parts else (
            parts["lokr_w1_b"].shape[0] if "lokr_w1_b" in parts else None)
        names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        d = ly_lokr.kron_weight(*[g(n) for n in names], scale=alpha / rank if rank else 1.0, backend="torch")
    else:
        d = parts["diff"]
    d = d.reshape(weight.shape)
    if "dora_scale" in parts:
        return ly_general._weight_decompose(weight + d, parts["dora_scale"], 1.0,
                                            parts["dora_scale"].shape[0] != 1) - weight
    return d


@pytest.mark.parametrize("dora", [None, "out", "in"])
def test_every_kind_loads_as_lycoris_applies_it(tmp_path, unet, dora):
    picks = {}
    linears = [p for p, m in unet.named_modules() if p.endswith("attn2.to_k")]
    convs = [p for p, m in unet.named_modules() if p.endswith(("resnets.0.conv1", "resnets.1.conv1",
                                                               "resnets.0.conv2", "resnets.1.conv2"))]
    for path, kind in zip(linears, LINEAR_KINDS):
        picks[path] = (kind, dora)
    for path, kind in zip(convs, CONV_KINDS):
        picks[path] = (kind, dora)
    assert len(picks) == len(LINEAR_KINDS) + len(CONV_KINDS)
    data, _ = file_for(unet, picks)
    (tmp_path / "ly.safetensors").write_bytes(data)
    tensors, _ = container.parse(data, "ly")
    inputs = unet_inputs(unet)
    with torch.no_grad():
        base = unet(**inputs).sample
    report = vislora.load_adapter(unet, tmp_path / "ly.safetensors", name="ly")
    try:
        assert report.format == "kohya" and len(report.matched) == len(picks) and not report.unmatched
        for path in picks:
            layer = unet.get_submodule(path)
            name = "lora_unet_" + path.replace(".", "_")
            parts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == name}
            want = _lycoris_delta(parts, layer.base_layer.weight.detach())
            got = (layer.weight - layer.base_layer.weight).detach()
            assert want.abs().max() > 1e-4
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
        with torch.no_grad():
            adapted = unet(**inputs).sample
            assert (adapted - base).abs().max() > 1e-4
        with pytest.raises(AdapterStateError, match=r"attn2\.to_k \(ly\)"):  # diff_b on a bias-free to_k
            vislora.merge(unet, "ly")
        assert not any(unet.get_submodule(p).merged for p in picks)  # refused before any layer changed
    finally:
        vislora.remove(unet, "ly")


def _inject_random(pipe, text=True):
    targets = {"unet.attn": {"rank": 4, "alpha": 2}, "unet.conv": {"rank": 4, "alpha": 2}}
    if text:
        targets["text.attn"] = {"rank": 4, "alpha": 2}
    vislora.inject(pipe, targets, init="random")


def _te_out(te, ids):
    with torch.no_grad():
        return te(ids).last_hidden_state


def test_our_kohya_file_loads_in_diffusers_sd15(tmp_path):
    pipe = sd15_pipeline()
    _inject_random(pipe)
    path = vislora.save_adapter(pipe, tmp_path / "k.safetensors", format="kohya")
    tensors, meta = container.read(path)
    assert all(k.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks", "lora_te_"))
               for k in tensors)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert all(t.dim() == 0 and float(t) > 0 for k, t in tensors.items() if k.endswith(".alpha"))
    inputs, ids = unet_inputs(pipe.unet), torch.randint(3, 99, (1, 8))
    with torch.no_grad():
        ours = pipe.unet(**inputs).sample
    ours_te = _te_out(pipe.text_encoder, ids)
    theirs = sd15_pipeline()
    with torch.no_grad():
        base = theirs.unet(**inputs).sample
    assert (ours - base).abs().max() > 1e-3
    theirs.load_lora_weights(str(path))
    with torch.no_grad():
        torch.testing.assert_close(theirs.unet(**inputs).sample, ours, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_te_out(theirs.text_encoder, ids), ours_te, rtol=1e-4, atol=1e-5)
    # and back: vislora reads its own kohya file to the same outputs
    again = sd15_pipeline()
    vislora.load_adapter(again, path)
    with torch.no_grad():
        torch.testing.assert_close(again.unet(**inputs).sample, ours, rtol=1e-5, atol=1e-6)


def test_our_sdxl_kohya_file_uses_sgm_names_and_loads_in_diffusers(tmp_path):
    from vislora.io import adapter_file

    pipe = sdxl_pipeline()
    vislora.inject(pipe, {"unet.down_blocks.1.attentions.*.transformer_blocks.0.attn2.to_*": {"rank": 4, "alpha": 2},
                          "unet.up_blocks.0.upsamplers.0.conv": {"rank": 4, "alpha": 2},
                          "unet.down_blocks.0.resnets.0.conv1": {"rank": 4, "alpha": 2}}, init="random")
    path = vislora.formats.write(tmp_path / "xl.safetensors", adapter_file(pipe), "kohya")
    tensors, meta = container.read(path)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in tensors
    assert "lora_unet_output_blocks_2_2_conv.lora_up.weight" in tensors
    assert "lora_unet_input_blocks_1_0_in_layers_2.alpha" in tensors
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    inputs = unet_inputs(pipe.unet)
    with torch.no_grad():
        ours = pipe.unet(**inputs).sample
    theirs = sdxl_pipeline()
    theirs.load_lora_weights(str(path))
    with torch.no_grad():
        torch.testing.assert_close(theirs.unet(**inputs).sample, ours, rtol=1e-4, atol=1e-5)


def test_kohya_made_file_in_both_namings_equals_diffusers(tmp_path, unet):
    """A hand-built kohya LoRA/LoCon file: diffusers-named, it loads in diffusers and in vislora to the same
    output; LDM-named (A1111 style, which diffusers' SD1 pipeline cannot read) it loads in vislora the same."""
    picks = {p: ("lora", None) for p, _ in unet.named_modules() if p.endswith(("attn2.to_k", "attn1.to_out.0",
                                                                             "resnets.0.conv1", "ff.net.2"))}
    data, _ = file_for(unet, picks, "diffusers")
    (tmp_path / "d.safetensors").write_bytes(data)
    tensors, _ = container.parse(data, "d")
    from vislora.formats.kohya_names import build

    names = build(unet)
    to_ldm = {names.names["diffusers"][w]: names.names["ldm"][w] for w in names.names["ldm"]}
    ldm = {to_ldm[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v for k, v in tensors.items()}
    container.write(tmp_path / "ldm.safetensors", ldm)
    inputs = unet_inputs(unet)

    pipe = sd15_pipeline()
    pipe.load_lora_weights(str(tmp_path / "d.safetensors"))
    with torch.no_grad():
        theirs = pipe.unet(**inputs).sample
    for name in ("d", "ldm"):
        ours = sd15_unet()
        vislora.load_adapter(ours, tmp_path / f"{name}.safetensors")
        with torch.no_grad():
            torch.testing.assert_close(ours(**inputs).sample, theirs, rtol=1e-4, atol=1e-5)


def test_sdxl_file_on_sd15_is_refused_naming_both(tmp_path, unet):
    xl = sdxl_unet((1, 1, 1))
    data, _ = file_for(xl, {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": ("lora", None)}, "ldm")
    (tmp_path / "xl.safetensors").write_bytes(data)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(AdapterCompatError, match=r"SDXL.*SD1\.x") as e:
        vislora.load_adapter(unet, tmp_path / "xl.safetensors")
    assert e.value.category == "wrong-base" and "xl.safetensors" in str(e.value)
    after = unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_unmatched_keys_are_listed_and_allow_partial_counts_per_component(tmp_path, unet):
    data, _ = file_for(unet, {TO_K: ("lora", None), CONV1: ("lora", None)})
    tensors, _ = container.parse(data, "x")
    tensors.update({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 768),
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(3072, 2),
                    "lora_unet_no_such_block_proj.lora_down.weight": torch.ones(2, 4),
                    "lora_unet_no_such_block_proj.lora_up.weight": torch.ones(4, 2)})
    container.write(tmp_path / "p.safetensors", tensors)
    with pytest.raises(AdapterCompatError, match="lora_unet_no_such_block_proj") as e:
        vislora.load_adapter(unet, tmp_path / "p.safetensors")
    assert e.value.category == "unmatched" and "lora_te 1" in str(e.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = vislora.load_adapter(unet, tmp_path / "p.safetensors", name="partial", strict=False)
    vislora.remove(unet, "partial")
    assert len(report.matched) == 2 and len(report.unmatched) == 2
    text = " ".join(str(w.message) for w in caught)
    assert "2 of 4 adapter modules loaded (model 2)" in text and "lora_unet 1" in text and "lora_te 1" in text


def _bad(tmp_path, unet):
    data, _ = file_for(unet, {TO_K: ("loha", None), CONV1: ("lokr", None)})
    tensors, meta = container.parse(data, "x")
    nan = dict(tensors)
    key = next(k for k in nan if k.endswith("hada_w1_a"))
    nan[key] = torch.full_like(nan[key], float("nan"))
    wrong = dict(tensors)
    key = next(k for k in wrong if k.endswith("hada_w2_b"))
    wrong[key] = torch.ones(4, 1024)
    nomatch = {k.replace("down_blocks_0", "down_blocks_9"): v for k, v in tensors.items()}
    import pickle

    return {
        "truncated": (data[:-7], AdapterFormatError, "truncated"),
        "non-finite": (container.serialize(nan), AdapterFormatError, "non-finite"),
        "wrong shapes": (container.serialize(wrong), AdapterCompatError, "shape-mismatch"),
        "no match": (container.serialize(nomatch), AdapterCompatError, "no-match"),
        "pickle": (pickle.dumps(tensors), UnsafeFormatError, "pickle"),
    }


@pytest.mark.parametrize("case", ["truncated", "non-finite", "wrong shapes", "no match", "pickle"])
def test_bad_kohya_files_get_typed_errors_naming_the_file(tmp_path, unet, case):
    data, cls, category = _bad(tmp_path, unet)[case]
    path = tmp_path / f"bad {case}.safetensors"
    path.write_bytes(data)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(cls) as e:
        vislora.load_adapter(unet, path)
    assert e.value.category == category and str(path) in str(e.value)
    after = unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not vislora.adapter_names(unet) if hasattr(vislora, "adapter_names") else True


def test_read_only_needs_no_model():
    tensors = {"lora_unet_x_y.lora_down.weight": torch.ones(2, 4), "lora_unet_x_y.lora_up.weight": torch.ones(4, 2)}
    f = kohya.read(tensors, {}, "f")
    assert f.modules["lora_unet_x_y"].kind == "lora"

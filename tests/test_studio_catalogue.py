"""The studio lists each adapter file as `vislora inspect` reads it, in every format and family: the same
format, module count, modules per component and base (a kohya file's lora_unet_... names are the `unet`
component, not 32 components; a UNet file is made for its cross-attention width, a Flux file for Flux.1)."""

from __future__ import annotations

import pytest
import torch

import vislora
from vislora.studio.catalogue import base_text, describe
from vislora.tools.convert import convert
from vislora.tools.inspect import describe as inspect_describe

from conftest import tiny_pipeline
from dit_models import tiny

FORMATS = ["vislora", "kohya", "diffusers", "lycoris"]
MODELS = {"SD": (["unet.attn", "text.attn"], "a cross-attention width of 24", "unet"), "Flux.1": ("transformer.all", "Flux.1", "transformer"),
          "Flux.2": ("transformer.all", "Flux.2", "transformer"), "SD3": ("transformer.all", "SD3", "transformer")}


def _file(tmp_path, family: str, fmt: str):
    model = tiny_pipeline() if family == "SD" else tiny(family)
    torch.manual_seed(0)
    vislora.inject(model, MODELS[family][0], rank=2, init="random")
    return vislora.save_adapter(model, tmp_path / f"{family}_{fmt}.safetensors", format=fmt)


def _same_as_inspect(path):
    facts, info = describe(path.name, path), inspect_describe(path)
    assert facts.usable, facts.error
    assert (facts.format, facts.modules, facts.components) == (info["format"], info["modules"], info["components"])
    assert facts.base == base_text(info["base"])
    assert facts.kinds == sorted(info["kinds"]) and facts.ranks == sorted(int(r) for r in info["ranks"])
    assert 2 in facts.ranks  # fused kohya qkv / linear1 modules sum their parts' ranks
    return facts


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", list(MODELS))
def test_the_catalogue_reads_a_file_as_inspect_does(tmp_path, family, fmt):
    facts = _same_as_inspect(_file(tmp_path, family, fmt))
    _, base, denoiser = MODELS[family]
    assert facts.base == base
    assert denoiser in facts.components and not any(c.startswith("lora_") for c in facts.components)
    if family == "SD":
        assert facts.components["text_encoder"] > 0
    assert f"made for {base}" in facts.summary()


@pytest.mark.parametrize("family", ["SD", "Flux.1"])
def test_a_kohya_file_made_by_convert_is_listed_by_component(tmp_path, family):
    source = _file(tmp_path, family, "vislora")
    converted = tmp_path / "converted.safetensors"
    convert(str(source), str(converted), "kohya")
    facts = _same_as_inspect(converted)
    assert facts.format == "kohya" and facts.base == MODELS[family][1]
    assert facts.components == describe("source", source).components  # unet 32 + text_encoder n, as before

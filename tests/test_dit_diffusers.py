"""diffusers' own loaders read vislora's diffusers-layout files of Flux.1, Flux.2 and SD3 transformers with the
same outputs (FluxPipeline, Flux2Pipeline, Flux2KleinPipeline, StableDiffusion3Pipeline.load_lora_weights on
tiny config-built transformers; the pipelines' other components are left out, the transformer is called
directly), and vislora reads what diffusers saves."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

import vislora
from dit_models import run, tiny

PIPELINES = [("Flux.1", "FluxPipeline"), ("Flux.2", "Flux2Pipeline"), ("Flux.2", "Flux2KleinPipeline"),
             ("SD3", "StableDiffusion3Pipeline")]


def pipeline(cls_name: str, transformer):
    """The pipeline class around `transformer`, its optional components None (load_lora_weights skips them)."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    cls = getattr(diffusers, cls_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: None for k, p in params.items() if k != "self" and p.default is inspect.Parameter.empty}
    kwargs.update(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler())
    return cls(**kwargs)


@pytest.mark.parametrize("family, cls_name", PIPELINES)
def test_diffusers_loads_our_file_with_the_same_outputs(tmp_path, family, cls_name, caplog):
    model = tiny(family)
    base = run(model, family)
    vislora.inject(model, "transformer.all", rank=2, alpha=3, init="random")
    vislora.inject(model, "transformer.embed", rank=1, alpha=1, init="random", name="second")  # not saved
    vislora.set_strength(model, "second", 0.0)
    ours = run(model, family)
    assert (ours - base).abs().max() > 1e-2  # the adapter changes the output
    path = vislora.save_adapter(model, tmp_path / "a.safetensors", format="diffusers")
    pipe = pipeline(cls_name, tiny(family))
    caplog.set_level(logging.ERROR, logger="diffusers")  # "no keys for text_encoder": there is none
    pipe.load_lora_weights(str(path))
    assert (run(pipe.transformer, family) - ours).abs().max() < 1e-5


@pytest.mark.parametrize("family, cls_name", PIPELINES[:2] + PIPELINES[3:])
def test_we_read_what_diffusers_saves(tmp_path, family, cls_name):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = tiny(family)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out", "proj_mlp", "to_qkv_mlp_proj"]
    present = [t for t in targets if any(n.endswith(t) for n, _ in model.named_modules())]
    model.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=present, init_lora_weights=False))
    theirs = run(model, family)
    pipe_cls = type(pipeline(cls_name, tiny(family)))
    pipe_cls.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(model),
                               transformer_lora_adapter_metadata=model.peft_config["default"].to_dict())
    fresh = tiny(family)
    report = vislora.load_adapter(fresh, tmp_path / "pytorch_lora_weights.safetensors")
    assert len(report.matched) == sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    assert (run(fresh, family) - theirs).abs().max() < 1e-5
    assert (theirs - run(tiny(family), family)).abs().max() > 1e-2


@pytest.mark.parametrize("cls_name", ["Flux2Pipeline", "Flux2KleinPipeline"])
def test_diffusers_reads_our_flux2_kohya_file(tmp_path, cls_name, caplog):
    """Flux.2's original names (fused qkv, linear1 = to_qkv_mlp_proj): diffusers' kohya converter gives our output."""
    model = tiny("Flux.2")
    vislora.inject(model, "transformer.blocks", rank=2, alpha=3, init="random")
    ours = run(model, "Flux.2")
    path = vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya")
    pipe = pipeline(cls_name, tiny("Flux.2"))
    caplog.set_level(logging.ERROR, logger="diffusers")
    pipe.load_lora_weights(str(path))
    assert (run(pipe.transformer, "Flux.2") - ours).abs().max() < 1e-5

"""Load / save / load gives the same ranks, alphas and tensors for every format we read, and the files we
write load in diffusers' load_lora_weights exactly for the kinds it knows (LoRA, LoCon), not Tucker."""

import pytest
import torch
from conftest import run_unet, tiny_pipeline, tiny_vit, unet_inputs

import vislora
from vislora import formats
from vislora.formats import container
from vislora.formats.peft_diffusers import peft_readable
from vislora.functional import KINDS

peft = pytest.importorskip("peft")


def _same(a, b):
    """Two parsed files hold the same modules: kind, rank, alpha, rslora, slices and bit-identical factors."""
    assert a.modules.keys() == b.modules.keys() and a.modules
    for path, wa in a.modules.items():
        wb = b.modules[path]
        assert (wa.kind, wa.rank, wa.alpha, wa.rslora, wa.slices) == (wb.kind, wb.rank, wb.alpha, wb.rslora, wb.slices), path
        assert wa.factors.keys() == wb.factors.keys(), path
        for name, t in wa.factors.items():
            assert torch.equal(t, wb.factors[name]), (path, name)
    assert a.extra.keys() == b.extra.keys() and all(torch.equal(v, b.extra[k]) for k, v in a.extra.items())


def _load_save_load(make_model, source, tmp_path):
    """Load `source`, save it, load the saved file: returns (parsed source, parsed saved file, model)."""
    first = make_model()
    vislora.load_adapter(first, source)
    saved = vislora.save_adapter(first, tmp_path / "again.safetensors")
    second = make_model()
    vislora.load_adapter(second, saved)
    assert vislora.status(first) == vislora.status(second)
    return vislora.read_adapter(source), vislora.read_adapter(saved), second


def test_native_round_trip(tmp_path):
    vit = tiny_vit()
    vislora.inject(vit, {"vit.qv": {"rank": 3, "alpha": 6}, "blocks.1.mlp.fc1": {"rank": 5, "alpha": 2}},
                   init="random", rslora=True, modules_to_save=["head"])
    source = vislora.save_adapter(vit, tmp_path / "a.safetensors")
    a, b, _ = _load_save_load(tiny_vit, source, tmp_path)
    _same(a, b)
    assert a.modules["blocks.0.attn.qkv"].slices == ((0, 64), (128, 192)) and b.extra


def test_native_pipeline_tucker_round_trip(tmp_path):
    pipe = tiny_pipeline()
    vislora.inject(pipe, {"unet.conv": {"rank": 3, "alpha": 1}, "text.attn": 2}, conv="tucker", init="random")
    source = vislora.save_adapter(pipe, tmp_path / "p.safetensors")
    a, b, _ = _load_save_load(tiny_pipeline, source, tmp_path)
    _same(a, b)
    assert {w.kind for w in a.modules.values()} == {"tucker", "locon", "lora"}  # 1 x 1 convs take LoCon


def test_peft_folder_round_trip_keeps_each_modules_rank_and_alpha(tmp_path):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], rank_pattern={"fc1": 2},
                             alpha_pattern={"fc1": 3}, init_lora_weights=False)
    peft.get_peft_model(tiny_vit(), config).save_pretrained(tmp_path / "peft")
    a, b, model = _load_save_load(tiny_vit, tmp_path / "peft", tmp_path)
    assert {(w.rank, w.alpha) for p, w in a.modules.items() if p.endswith("qkv")} == {(4, 8.0)}
    assert {(w.rank, w.alpha) for p, w in a.modules.items() if p.endswith("fc1")} == {(2, 3.0)}
    _same(a, b)
    saved_config = b.config  # the config written records the real ranks, not a default
    assert saved_config.rank == 4 and {r.rank for r in saved_config.targets} == {2, 4}
    # and the PEFT writer gives the same description back
    formats.write(tmp_path / "peft_again.safetensors", b, "peft_diffusers")
    _same(a, formats.read(tmp_path / "peft_again.safetensors"))


def test_diffusers_round_trip(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = tiny_pipeline()
    config = peft.LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                             rank_pattern={"to_k": 2}, init_lora_weights=False)
    pipe.unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet), unet_lora_adapter_metadata=config.to_dict())
    a, b, _ = _load_save_load(tiny_pipeline, tmp_path / "pytorch_lora_weights.safetensors", tmp_path)
    assert {w.rank for p, w in a.modules.items() if p.endswith("to_k")} == {2}
    _same(a, b)


def test_old_diffusers_spelling_with_alpha_tensors_round_trip(tmp_path):
    """`lora.down/up` keys with a per-module `.alpha` tensor: each module keeps its own alpha."""
    attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for proj, rank, alpha in (("to_q", 2, 1.0), ("to_v", 3, 6.0)):
        tensors[f"{attn}.{proj}.lora.down.weight"] = torch.randn(rank, 32, generator=g)
        tensors[f"{attn}.{proj}.lora.up.weight"] = torch.randn(32, rank, generator=g)
        tensors[f"{attn}.{proj}.alpha"] = torch.tensor(alpha)
    source = container.write(tmp_path / "old.safetensors", tensors, {"format": "pt"})
    a, b, _ = _load_save_load(tiny_pipeline, source, tmp_path)
    assert {p.rsplit(".", 1)[1]: (w.rank, w.alpha) for p, w in a.modules.items()} == {"to_q": (2, 1.0),
                                                                                     "to_v": (3, 6.0)}
    _same(a, b)


def _kind_options(kind):
    """Targets and inject keywords that put `kind` on a tiny pipeline's UNet."""
    if isinstance(torch.nn.Linear(1, 1), KINDS[kind].BASES):
        return {"target": "unet.attn", "linear": kind}
    return {"target": "unet.conv", "conv": kind}


@pytest.mark.parametrize("kind", list(KINDS))
def test_diffusers_load_lora_weights_reads_exactly_the_kinds_it_knows(tmp_path, kind):
    pipe = tiny_pipeline()
    vislora.inject(pipe, rank=4, alpha=2, init="random", **_kind_options(kind))
    path = vislora.save_adapter(pipe, tmp_path / "pytorch_lora_weights.safetensors")
    inputs = unet_inputs()
    ours = run_unet(pipe.unet, inputs)
    theirs = tiny_pipeline()
    assert not torch.allclose(ours, run_unet(theirs.unet, inputs), atol=1e-3)
    if peft_readable(KINDS[kind].FACTORS):
        theirs.load_lora_weights(str(path), adapter_name="ours")
        torch.testing.assert_close(run_unet(theirs.unet, inputs), ours, rtol=1e-4, atol=1e-4)
    else:  # e.g. Tucker: diffusers has no core (lora_mid) and refuses the file
        with pytest.raises((RuntimeError, ValueError, KeyError)):
            theirs.load_lora_weights(str(path), adapter_name="ours")

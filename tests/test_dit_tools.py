"""`vislora convert`, `merge`, `resize` and `extract` on diffusion-transformer files (kohya Flux fused, kohya SD3,
diffusers, LyCORIS): names resolve against the family's stand-in (tools/skeleton.py), and the results load into
tiny config-built transformers with the outputs they should have."""

from __future__ import annotations

import pytest
import torch

import vislora
from dit_models import run, tiny
from vislora.formats import container
from vislora.tools import common, convert, extract, merge, resize

FAMILIES = ["Flux.1", "Flux.2", "SD3"]


def _adapted(family, seed=0, rank=2, name="default"):
    model = tiny(family)
    torch.manual_seed(seed)
    vislora.inject(model, "transformer.all", rank=rank, alpha=3, init="random", name=name)
    return model


def _loaded(family, path, strength=1.0):
    model = tiny(family)
    report = vislora.load_adapter(model, path, strength=strength)
    assert not report.unmatched
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_between_kohya_diffusers_and_lycoris_keeps_the_output(tmp_path, family):
    model = _adapted(family)
    want = run(model, family)
    kohya_file = vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya")
    diffusers_file = tmp_path / "d.safetensors"
    assert convert.main([str(kohya_file), str(diffusers_file), "--to", "diffusers"]) == 0
    assert all(k.startswith("transformer.") for k in container.read(diffusers_file)[0])
    back = convert.convert(str(diffusers_file), str(tmp_path / "k2.safetensors"), "kohya")
    lyco = convert.convert(str(kohya_file), str(tmp_path / "l.safetensors"), "lycoris")
    for path in (diffusers_file, back, lyco):
        assert (run(_loaded(family, path), family) - want).abs().max() < 1e-5, path
    # kohya -> diffusers -> kohya: the fused tensors of the first file, bit for bit
    first, again = container.read(kohya_file)[0], container.read(back)[0]
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_merge_of_kohya_flux_files_is_the_weighted_sum(tmp_path):
    a, b = _adapted("Flux.1", seed=1), _adapted("Flux.1", seed=2)
    paths = [vislora.save_adapter(m, tmp_path / f"{i}.safetensors", format="kohya") for i, m in enumerate((a, b))]
    both = tiny("Flux.1")
    for i, (path, w) in enumerate(zip(paths, (0.6, -0.4))):
        vislora.load_adapter(both, path, name=f"a{i}", strength=w)
    want = run(both, "Flux.1")
    out = tmp_path / "m.safetensors"
    assert merge.main([f"{paths[0]}:0.6", f"{paths[1]}:-0.4", "-o", str(out), "--to", "kohya"]) == 0
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in container.read(out)[0]
    assert (run(_loaded("Flux.1", out), "Flux.1") - want).abs().max() < 1e-5


@pytest.mark.parametrize("family", ["Flux.1", "SD3"])
def test_resize_of_a_kohya_file_to_its_rank_is_exact_and_lower_ranks_approximate(tmp_path, family):
    model = _adapted(family, rank=2)
    want, base = run(model, family), run(tiny(family), family)
    adapter = common.read(vislora.save_adapter(model, tmp_path / "k.safetensors", format="kohya"))
    same, report = resize.resize(adapter, rank=2)
    assert report.max_rel_error < 1e-5
    path = common.write(tmp_path / "r.safetensors", same, "kohya")
    assert (run(_loaded(family, path), family) - want).abs().max() < 1e-4
    lower, report = resize.resize(adapter, rank=1)
    assert 0.05 < report.max_rel_error < 1
    got = run(_loaded(family, common.write(tmp_path / "r1.safetensors", lower, "kohya")), family)
    assert 0 < (got - want).abs().max() < (want - base).abs().max()


def test_extract_from_two_flux_checkpoints_gives_the_adapter(tmp_path):
    model = _adapted("Flux.1", rank=2)
    want = run(model, "Flux.1")
    vislora.merge(model)
    vislora.remove(model, keep_merged=True)  # the tuned weights: the adapter folded in
    tuned = {k: v.contiguous() for k, v in model.state_dict().items()}
    base = tiny("Flux.1").state_dict()
    container.write(tmp_path / "base.safetensors", {k: v.contiguous() for k, v in base.items()}, {})
    container.write(tmp_path / "tuned.safetensors", tuned, {})
    adapter, report = extract.extract(str(tmp_path / "base.safetensors"), str(tmp_path / "tuned.safetensors"), rank=2)
    assert report.max_rel_error < 1e-5 and len(report.errors) == 41 and report.skipped == 9  # transformer.all; embedders
    for to in ("kohya", "diffusers"):
        path = common.write(tmp_path / f"x.{to}.safetensors", adapter, to)
        assert (run(_loaded("Flux.1", path), "Flux.1") - want).abs().max() < 1e-4, to

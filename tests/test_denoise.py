"""One denoising batch (vislora.diffusion.denoise): instance and class samples in one UNet call compute what two
calls compute, and the evaluation loss is fixed noise at fixed timesteps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sd_tiny import save_pipeline

import vislora
from vislora.diffusion.buckets import bucket_sizes
from vislora.diffusion.captions import scan_captioned
from vislora.diffusion.latents import TextCache, cache_latents, load_items
from vislora.recipes import dreambooth_sd
from vislora.diffusion.bases import load_pipeline
from vislora.diffusion import denoise
from vislora.diffusion.batches import draw_seeds, unconditional_count, unconditional_rows
from vislora.diffusion.preserve import base_prediction_batch, take_rows

DIGITS_SD = Path(__file__).resolve().parents[1] / "samples" / "digits_sd"


def _pictures(folder: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoise")
    model = DIGITS_SD if (DIGITS_SD / "model_index.json").is_file() else save_pipeline(root)
    base = load_pipeline(str(model))
    torch.manual_seed(0)
    vislora.inject(base.pipe, {"unet.attn": {"rank": 4, "alpha": 4}}, init="random")  # up != 0: the adapter acts
    sizes = bucket_sizes(32, dreambooth_sd.multiple_of(base), square=True)
    sets = {name: load_items(scan_captioned(_pictures(root / name, 3, seed), caption=caption, warn=False), sizes)
            for name, seed, caption in (("instance", 0, "a sks digit"), ("class", 1, "a digit"))}
    cached = {k: cache_latents(base.pipe.vae, v, "cpu") for k, v in sets.items()}
    alphas = torch.as_tensor(base.pipe.scheduler.alphas_cumprod, dtype=torch.float32)
    return base, sets, cached, TextCache(base, True), alphas


def _parts(base, sets, cached, text, alphas):
    """Two instance and two class samples, each with the seeds a recipe step would give them."""
    return [denoise.training_batch(base, base.pipe.vae, text, sets[k], [0, 2], cached[k],
                                   draw_seeds(0, 5, first, 2), alphas, "cpu", noise_offset=0.1)
            for k, first in (("instance", 0), ("class", 2))]


def _step(unet, batches, alphas, prediction, weight: float = 0.7):
    """instance mean + weight x prior mean, from one UNet call per batch given; the loss and the gradients."""
    losses = torch.cat([denoise.unet_losses(unet, b, alphas, prediction, 5.0) for b in batches])
    inst, prior = losses.split([2, 2])
    loss = inst.mean() + weight * prior.mean()
    unet.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}
    return loss.detach(), losses.detach(), grads


def test_one_unet_call_equals_two(setup):
    """diffusers' DreamBooth concatenation: the same per-sample losses, total loss and adapter gradients as
    separate calls on the instance and the class batch (fp32, within 1e-6 relative: summation order only)."""
    base, sets, cached, text, alphas = setup
    unet = base.pipe.unet
    parts = _parts(base, sets, cached, text, alphas)
    assert [len(p) for p in parts] == [2, 2]
    loss_one, per_one, grads_one = _step(unet, [denoise.cat(parts)], alphas, base.prediction)
    loss_two, per_two, grads_two = _step(unet, parts, alphas, base.prediction)
    torch.testing.assert_close(per_one, per_two, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss_one, loss_two, rtol=1e-6, atol=1e-7)
    assert set(grads_one) == set(grads_two) and len(grads_one) == 2 * 32
    assert sum(float(g.abs().max()) > 1e-6 for g in grads_one.values()) >= 32  # the adapters learn from it
    for name in grads_one:
        scale = float(grads_two[name].abs().max()) + 1e-12
        assert float((grads_one[name] - grads_two[name]).abs().max()) <= 1e-5 * scale + 1e-9, name


def test_draws_follow_the_seeds_not_the_batch(setup):
    """A sample's timestep and noise are its seed's: the same alone as inside a batch."""
    base, sets, cached, text, alphas = setup
    whole = _parts(base, sets, cached, text, alphas)[0]
    seeds = draw_seeds(0, 5, 0, 2)
    alone = denoise.training_batch(base, base.pipe.vae, text, sets["instance"], [2], cached["instance"],
                                   seeds[1:], alphas, "cpu", noise_offset=0.1)
    assert torch.equal(alone.noisy[0], whole.noisy[1]) and int(alone.t[0]) == int(whole.t[1])
    assert int(whole.t[0]) != int(whole.t[1])


def test_the_empty_prompt_is_kept_by_place_in_the_global_batch(setup):
    """--keep-unconditional: every 4th sample of the global batch gets an empty-prompt sample, whichever
    process holds it; its latent and timestep are the instance sample's, its goal the base's prediction for
    the empty prompt (the adapter off), which the adapter then misses."""
    assert unconditional_rows(slice(0, 4), 4) == [0] and unconditional_count(4) == 1
    assert unconditional_rows(slice(0, 2), 4) == [0] and unconditional_rows(slice(2, 4), 4) == []
    assert unconditional_rows(slice(4, 8), 8) == [0] and unconditional_count(8) == 2
    assert unconditional_rows(slice(0, 1), 1) == [0] and unconditional_count(1) == 1
    assert unconditional_rows(slice(0, 9), 9) == [0, 4, 8] and unconditional_count(9) == 3
    base, sets, cached, text, alphas = setup
    part = _parts(base, sets, cached, text, alphas)[0]
    one = take_rows(part, [1])
    assert len(one) == 1 and torch.equal(one.noisy[0], part.noisy[1]) and int(one.t[0]) == int(part.t[1])
    empty = base_prediction_batch(base, base.pipe.unet, text, one, "")
    assert torch.equal(empty.hidden[0], text([""], "cpu").hidden[0]) and torch.equal(empty.noisy, one.noisy)
    with torch.no_grad():
        adapted = base.pipe.unet(empty.noisy, empty.t, empty.hidden).sample
    assert float((adapted - empty.goal).abs().max()) > 1e-4


def test_eval_loss_is_fixed_and_sees_the_adapter(setup):
    base, sets, cached, text, alphas = setup
    assert denoise.eval_timesteps(1000) == [62, 187, 312, 437, 562, 687, 812, 937]
    assert denoise.eval_picks(3, 16) == [0, 1, 2] and denoise.eval_picks(10, 4) == [0, 2, 5, 7]
    unet = base.pipe.unet
    args = (base, unet, base.pipe.vae, text, sets["instance"], cached["instance"], alphas, "cpu")
    first, again = denoise.eval_loss(*args), denoise.eval_loss(*args)
    assert first == again and 0.01 < first < 10
    assert denoise.eval_loss(*args, limit=1) != first  # one picture of three
    vislora.set_strength(base.pipe, "default", 0.0)
    try:
        plain = denoise.eval_loss(*args)
    finally:
        vislora.set_strength(base.pipe, "default", 1.0)
    assert abs(plain - first) > 1e-4 * first

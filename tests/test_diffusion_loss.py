"""The denoising objective against diffusers' scheduler, and aspect-ratio buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vislora.diffusion.buckets import MAX_RATIO, assign, bucket_batches, bucket_sizes, fit
from vislora.diffusion import loss as dl


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def test_noise_and_velocity_equal_diffusers(scheduler):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 499, 999])
    alphas = scheduler.alphas_cumprod.float()
    torch.testing.assert_close(dl.add_noise(x0, noise, t, alphas), scheduler.add_noise(x0, noise, t), rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(dl.target(x0, noise, t, alphas, "v_prediction"), scheduler.get_velocity(x0, noise, t),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(dl.target(x0, noise, t, alphas, "epsilon"), noise)


@pytest.mark.parametrize("prediction", dl.PREDICTIONS)
def test_min_snr_weights(scheduler, prediction):
    """min(snr, 5) / snr for epsilon, / (snr + 1) for v; snr = a / (1 - a) (diffusers' compute_snr)."""
    t = torch.tensor([10, 300, 900])
    a = scheduler.alphas_cumprod[t].double()
    snr = a / (1 - a)
    expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + (prediction == "v_prediction"))
    torch.testing.assert_close(dl.snr_weights(t, scheduler.alphas_cumprod, 5.0, prediction).double(), expected,
                               rtol=1e-5, atol=0)
    assert torch.equal(dl.snr_weights(t, scheduler.alphas_cumprod, None, prediction), torch.ones(3))
    assert expected[0] < 1 and expected[-1] == pytest.approx(1.0 if prediction == "epsilon" else float(snr[-1] / (snr[-1] + 1)))


def test_draws_are_a_function_of_the_seed_and_noise_offset_shifts_channels():
    a = dl.draw((4, 8, 8), torch.Generator().manual_seed(3), 1000)
    b = dl.draw((4, 8, 8), torch.Generator().manual_seed(3), 1000, noise_offset=0.1)
    assert a.timestep == b.timestep and torch.equal(a.latent_noise, b.latent_noise)
    shift = b.noise - a.noise                                   # a constant per channel
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift)) and shift.abs().max() > 0


def test_buckets_keep_the_area_and_the_ratio():
    sizes = bucket_sizes(512, 64)
    assert (512, 512) in sizes and all(w % 64 == 0 and h % 64 == 0 for w, h in sizes)
    assert all(w * h <= 512 * 512 and max(w, h) / min(w, h) <= MAX_RATIO for w, h in sizes)
    assert sizes[assign(sizes, (1600, 900))] == (640, 384)    # 16:9 -> the nearest ratio (5:3)
    assert sizes[assign(sizes, (900, 1600))] == (384, 640)
    assert bucket_sizes(512, 64, square=True) == [(512, 512)]


def test_fit_covers_and_centre_crops():
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, 45:55] = 255                                           # a white bar in the middle
    pixels, (top, left) = fit(Image.fromarray(a), (32, 32))
    assert pixels.shape == (3, 32, 32) and (top, left) == (0, (80 - 32) // 2)
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels[:, :, 16].mean() > 0.5


def test_bucket_batches_are_pure_and_never_mix_buckets():
    buckets = [0] * 7 + [1] * 5 + [2]
    first = bucket_batches(buckets, 2, seed=0, epoch=0)
    assert first == bucket_batches(buckets, 2, seed=0, epoch=0) != bucket_batches(buckets, 2, seed=0, epoch=1)
    assert len(first) == 3 + 2 and all(len({buckets[i] for i in b}) == 1 and len(b) == 2 for b in first)
    assert len({i for b in first for i in b}) == 10
    assert math.isclose(sum(len(b) for b in first) / len(buckets), 10 / 13)

"""The embedded digits transformer base (samples/digits_dit): the training shortcut for the pipeline's T5 zero
tokens is exact, and the shipped folder opens offline with its real pipeline class and draws."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
sys.path.insert(0, str(SAMPLES))

import make_digits_dit  # noqa: E402

MODEL = SAMPLES / "digits_dit"


def test_one_weighted_zero_token_is_the_pipelines_256():
    """Training's context (CLIP tokens + one zero token whose attention score gains log 256) gives the
    transformer's output on the pipeline's context (CLIP tokens + 256 zero tokens)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**make_digits_dit.TRANSFORMER_CONFIG)
    with torch.no_grad():
        for p in transformer.parameters():  # away from the init, so the text path carries weight
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    clip, pooled = torch.randn(2, 24, 128, generator=g), torch.randn(2, 128, generator=g)
    assert make_digits_dit.check_collapse(transformer, clip, pooled) < 1e-5
    # and the zero tokens matter: dropping them changes the output
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300.0, 800.0])
    with torch.no_grad():
        full = transformer(x, make_digits_dit.with_zero_tokens(clip, 256), pooled, t).sample
        none = transformer(x, clip, pooled, t).sample
    assert (full - none).abs().max() > 1e-3


@pytest.mark.skipif(not MODEL.exists(), reason="samples/digits_dit is not shipped in this checkout")
def test_shipped_base_opens_offline_and_draws(monkeypatch):
    from diffusers import StableDiffusion3Pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusion3Pipeline.from_pretrained(MODEL, torch_dtype=torch.float32, local_files_only=True)
    assert pipe.transformer.config.sample_size == 8
    t5 = pipe._get_t5_prompt_embeds(["a handwritten digit one"], device="cpu")  # the placeholder: zeros, as no T5
    assert t5.shape == (1, 256, 128) and not t5.any()
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a handwritten digit one", "a handwritten digit zero"], num_inference_steps=4, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert abs(float(images[0].mean()) - float(images[1].mean())) > 1e-3  # the prompt reaches the drawing


@pytest.mark.skipif(not MODEL.exists(), reason="samples/digits_dit is not shipped in this checkout")
def test_fast_sampling_draws_what_the_pipeline_draws():
    """make_digits_dit.legibility's shortcut (one weighted zero token) gives the default pipeline's drawings."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(MODEL, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt=["a handwritten digit seven"] * 2, num_inference_steps=3, guidance_scale=5.0, output_type="np")
    plain = pipe(**args, generator=torch.Generator().manual_seed(0)).images
    fast = pipe(**args, generator=torch.Generator().manual_seed(0), **make_digits_dit.fast_sampling(pipe)).images
    assert np.abs(plain - fast).max() < 1e-4

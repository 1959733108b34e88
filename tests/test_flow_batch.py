"""Flow-matching batches on tiny config-built SD3, Flux.1 and Flux.2 transformers: per-sample draws that do not
depend on the batch, the loss of one call equal to the script's, and a few LoRA steps lowering the evaluation
loss for every family."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import vislora
from dit_models import tiny
from vislora.diffusion import flow
from vislora.diffusion import flow_layout as fl
from vislora.diffusion.flow_batch import FlowSpec, cat, flow_eval_loss, flow_losses, flow_training_batch
from vislora.errors import VisloraError

FAMILIES = ["SD3", "Flux.1", "Flux.2"]
# VAE latent channels that give the tiny transformers' inputs: SD3 4 (patchified inside), Flux.1 2 (2x2
# packing -> 8), Flux.2 2 (patchify -> 8)
CHANNELS = {"SD3": 4, "Flux.1": 2, "Flux.2": 2}


def _vae(family: str):
    from diffusers.configuration_utils import FrozenDict

    if family == "Flux.2":
        bn = torch.nn.BatchNorm2d(8)
        bn.running_mean.fill_(0.1), bn.running_var.fill_(1.5)
        return SimpleNamespace(bn=bn, config=FrozenDict(batch_norm_eps=1e-4))
    return SimpleNamespace(config=FrozenDict(scaling_factor=0.8, shift_factor=0.1))


class Text:
    """Fixed random embeddings per prompt, as TextCache hands them out."""

    def __init__(self, family: str) -> None:
        self.family, self.store = family, {}

    def __call__(self, prompts, device):
        for p in prompts:
            g = torch.Generator().manual_seed(len(self.store) + 7)
            self.store.setdefault(p, (torch.randn(5, 16, generator=g), torch.randn(8, generator=g)))
        pooled = None if self.family == "Flux.2" else torch.stack([self.store[p][1] for p in prompts])
        return SimpleNamespace(hidden=torch.stack([self.store[p][0] for p in prompts]), pooled=pooled)


def _data(family: str, n: int = 4):
    g = torch.Generator().manual_seed(2)
    size = 8  # latent side: 16 tokens for every family
    cached = [(torch.randn(CHANNELS[family], size, size, generator=g), torch.full((CHANNELS[family], size, size), 0.05))
              for _ in range(n)]
    items = SimpleNamespace(pixels=[None] * n, data=SimpleNamespace(captions=[f"a sks digit {i}" for i in range(n)]))
    return items, cached


def _transformer(family: str):
    model = tiny(family)
    if family == "SD3":  # the tiny SD3 patchifies 8x8 latents into 16 tokens
        return model
    return model


SIGMAS = flow.SigmaTable.from_config({"shift": 3.0}).sigmas


@pytest.mark.parametrize("family", FAMILIES)
def test_a_sample_draws_the_same_in_any_batch(family):
    spec, items, cached = FlowSpec.of(family), *_data(family)
    both = flow_training_batch(spec, _vae(family), Text(family), items, [1, 3], cached, [11, 12], SIGMAS, "cpu")
    alone = flow_training_batch(spec, _vae(family), Text(family), items, [3], cached, [12], SIGMAS, "cpu")
    assert torch.equal(both.noisy[1], alone.noisy[0]) and torch.equal(both.goal[1], alone.goal[0])
    assert torch.equal(both.sigmas[1:], alone.sigmas) and len(cat([both, alone])) == 3


def test_noise_offset_is_refused_for_flow_bases():
    items, cached = _data("SD3")
    with pytest.raises(VisloraError, match="noise-offset"):
        flow_training_batch(FlowSpec.of("SD3"), _vae("SD3"), Text("SD3"), items, [0], cached, [1], SIGMAS, "cpu", 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_the_objective_on_the_family_call(family):
    """flow_losses = weight x mean (pred - target)^2 with the family's call and SD3's preconditioning."""
    spec, items, cached = FlowSpec.of(family, weighting="cosmap"), *_data(family)
    model = _transformer(family)
    batch = flow_training_batch(spec, _vae(family), Text(family), items, [0, 2], cached, [5, 6], SIGMAS, "cpu")
    with torch.no_grad():
        losses = flow_losses(spec, model, batch)
        raw = fl.predict(family, model, batch.noisy, batch.timesteps, fl.TextInputs(batch.hidden, batch.pooled))
    pred = flow.precondition_output(raw, batch.noisy, batch.sigmas) if family == "SD3" else raw
    want = (pred - batch.goal).pow(2).flatten(1).mean(1) * flow.loss_weights("cosmap", batch.sigmas)
    torch.testing.assert_close(losses, want)
    assert torch.equal(batch.timesteps, batch.sigmas * 1000)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_lora_steps_lower_the_eval_loss(family):
    spec, (items, cached) = FlowSpec.of(family), _data(family)
    vae, text = _vae(family), Text(family)
    model = _transformer(family)
    vislora.inject(model, "transformer.all", rank=4, alpha=4)
    before = flow_eval_loss(spec, model, vae, text, items, cached, SIGMAS, "cpu")
    opt = torch.optim.AdamW(vislora.trainable_parameters(model), lr=3e-2)
    model.train()
    for step in range(24):
        batch = flow_training_batch(spec, vae, text, items, [step % 4, (step + 1) % 4], cached, [100 + step, 200 + step],
                                    SIGMAS, "cpu")
        flow_losses(spec, model, batch).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    after = flow_eval_loss(spec, model, vae, text, items, cached, SIGMAS, "cpu")
    assert after < 0.9 * before, (before, after)

"""The flow-matching objective and the transformer families' latent layouts, number for number against
diffusers' own functions: the scheduler's sigma table, compute_density_for_timestep_sampling,
compute_loss_weighting_for_sd3, the pipelines' packing and position ids, and the training scripts' step."""

from __future__ import annotations

import pytest
import torch

from dit_models import tiny
from vislora.diffusion import flow
from vislora.diffusion import flow_layout as fl
from vislora.errors import VisloraError

SCHEMES = ["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"]


@pytest.mark.parametrize("config", [dict(), dict(shift=3.0), dict(shift=3.0, use_dynamic_shifting=True),
                                    dict(num_train_timesteps=37, shift=1.7)])
def test_sigma_table_is_the_schedulers(config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(**config)
    table = flow.SigmaTable.from_config(sched.config)
    assert torch.equal(table.sigmas, sched.sigmas) and torch.equal(table.timesteps, sched.timesteps)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_timesteps_and_weights_equal_diffusers(scheme):
    """Same generator state -> the same u, table indices, timesteps, sigmas (the scripts' get_sigmas) and
    loss weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    objective = flow.FlowObjective(weighting=scheme)
    theirs_u = compute_density_for_timestep_sampling(scheme, 64, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                     generator=torch.Generator().manual_seed(3))
    ours_u = flow.sample_u(objective, 64, torch.Generator().manual_seed(3))
    assert torch.equal(ours_u, theirs_u)
    index = flow.table_index(ours_u, 1000)
    theirs_t = sched.timesteps[(theirs_u * 1000).long()]
    theirs_sigma = sched.sigmas[[(sched.timesteps == t).nonzero().item() for t in theirs_t]]
    ours_t, ours_sigma = flow.SigmaTable.from_config(sched.config).at(index)
    assert torch.equal(ours_t, theirs_t) and torch.equal(ours_sigma, theirs_sigma)
    assert torch.equal(flow.loss_weights(scheme, ours_sigma), compute_loss_weighting_for_sd3(scheme, theirs_sigma))
    if scheme == "logit_normal":  # concentrated in the middle of the schedule, as intended
        assert 0.35 < float(ours_sigma.median()) < 0.9


def test_mode_at_its_edge_stays_in_the_table():
    """rand() = 0 gives u = 1 under `mode`: index T, one past the table; it is clamped to the last entry."""
    table = flow.SigmaTable.from_config({})
    t, s = table.at(flow.table_index(torch.tensor([1.0]), 1000))
    assert float(s) == pytest.approx(0.001) and float(t) == pytest.approx(1.0)


def test_bad_scheme_names_the_choices():
    with pytest.raises(VisloraError, match="logit_normal"):
        flow.sample_u(flow.FlowObjective(weighting="uniform"), 2)


def test_family_defaults_are_the_scripts():
    assert flow.DEFAULTS["Flux.1"].weighting == flow.DEFAULTS["Flux.2"].weighting == "none"
    assert flow.DEFAULTS["SD3"].weighting == "logit_normal" and flow.DEFAULTS["SD3"].precondition
    assert flow.DEFAULTS["SD3"].mode_scale == 1.29 and flow.DEFAULTS["Flux.1"].guidance == 3.5


def test_precondition_is_the_velocity_error_scaled_by_sigma():
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(3, 4, 6, 6, generator=g) for _ in range(3))
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    noisy = flow.add_noise(x0, noise, sigmas)
    mapped = flow.precondition_output(pred, noisy, sigmas)
    velocity = flow.target(x0, noise, precondition=False)
    assert torch.equal(flow.target(x0, noise, precondition=True), x0)
    torch.testing.assert_close(mapped - x0, sigmas.view(-1, 1, 1, 1) * (velocity - pred), atol=1e-6, rtol=0)


def test_flux1_packing_equals_the_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    packed = fl.pack_2x2(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 10))
    assert torch.equal(fl.unpack_2x2(packed, 6, 10), FluxPipeline._unpack_latents(packed, 6 * 8, 10 * 8, 8))
    assert torch.equal(fl.unpack_2x2(packed, 6, 10), x)
    assert torch.equal(fl.flux1_image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32))


def test_flux2_layout_equals_the_pipeline():
    from diffusers import Flux2Pipeline

    x = torch.randn(2, 8, 6, 10)
    p = fl.patchify(x)
    assert torch.equal(p, Flux2Pipeline._patchify_latents(x)) and torch.equal(fl.unpatchify(p), x)
    t = fl.tokens(p)
    assert torch.equal(t, Flux2Pipeline._pack_latents(p))
    ids = Flux2Pipeline._prepare_latent_ids(p)
    assert torch.equal(fl.flux2_image_ids(3, 5), ids[0])
    assert torch.equal(fl.untokens(t, 3, 5), Flux2Pipeline._unpack_latents_with_ids(t, ids))
    assert torch.equal(fl.flux2_text_ids(7), Flux2Pipeline._prepare_text_ids(torch.zeros(2, 7, 3))[0])


def test_flux2_batch_norm_latents_equal_the_script():
    """train_dreambooth_lora_flux2.py: patchify, then (x - bn mean) / sqrt(bn var + eps)."""
    from types import SimpleNamespace

    from diffusers.configuration_utils import FrozenDict

    bn = torch.nn.BatchNorm2d(32)
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    vae = SimpleNamespace(bn=bn, config=FrozenDict(batch_norm_eps=1e-4))
    x = torch.randn(2, 8, 6, 10)
    theirs = (fl.patchify(x) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    assert torch.equal(fl.model_latents("Flux.2", vae, x), theirs)


def _script_step(family: str, model, x0, noise, timesteps, sigmas, hidden, pooled):
    """The prediction and target as train_dreambooth_lora_flux / _flux2 / _sd3 compute them."""
    from diffusers import Flux2Pipeline, FluxPipeline

    s = sigmas.view(-1, 1, 1, 1)
    noisy = (1.0 - s) * x0 + s * noise
    b, c, h, w = x0.shape
    if family == "SD3":
        pred = model(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=hidden,
                     pooled_projections=pooled, return_dict=False)[0]
        return pred * (-s) + noisy, x0
    if family == "Flux.1":
        pred = model(hidden_states=FluxPipeline._pack_latents(noisy, b, c, h, w), timestep=timesteps / 1000,
                     guidance=torch.full((b,), 3.5), pooled_projections=pooled, encoder_hidden_states=hidden,
                     txt_ids=torch.zeros(hidden.shape[1], 3),
                     img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                     return_dict=False)[0]
        return FluxPipeline._unpack_latents(pred, h * 8, w * 8, 8), noise - x0
    ids = Flux2Pipeline._prepare_latent_ids(noisy)
    pred = model(hidden_states=Flux2Pipeline._pack_latents(noisy), timestep=timesteps / 1000, guidance=None,
                 encoder_hidden_states=hidden, txt_ids=Flux2Pipeline._prepare_text_ids(hidden), img_ids=ids,
                 return_dict=False)[0]
    return Flux2Pipeline._unpack_latents_with_ids(pred, ids), noise - x0


@pytest.mark.parametrize("family", ["Flux.1", "Flux.2", "SD3"])
def test_one_step_equals_the_training_script(family):
    """Prediction, target and loss of one flow-matching step on a tiny transformer, ours against the script's
    sequence of pipeline helpers."""
    model = tiny(family)
    channels = 4 if family == "SD3" else 8
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, channels, 4, 4, generator=g), torch.randn(2, channels, 4, 4, generator=g)
    text = fl.TextInputs(torch.randn(2, 5, 16, generator=g), None if family == "Flux.2" else torch.randn(2, 8, generator=g))
    objective = flow.DEFAULTS[family]
    table = flow.SigmaTable.from_config({"shift": 3.0})
    timesteps, sigmas = table.at(flow.table_index(flow.sample_u(objective, 2, g), 1000))
    if family == "Flux.1":  # Flux.1's tiny transformer packs 2x2 patches of 2 channels into its 8 inputs
        x0, noise = x0[:, :2].repeat(1, 1, 2, 2), noise[:, :2].repeat(1, 1, 2, 2)
    with torch.no_grad():
        want_pred, want_goal = _script_step(family, model, x0, noise, timesteps, sigmas, text.hidden, text.pooled)
        noisy = flow.add_noise(x0, noise, sigmas)
        pred = fl.predict(family, model, noisy, timesteps, text, objective.guidance)
        if objective.precondition:
            pred = flow.precondition_output(pred, noisy, sigmas)
    goal = flow.target(x0, noise, objective.precondition)
    assert pred.abs().max() > 1e-3
    torch.testing.assert_close(pred, want_pred, atol=1e-6, rtol=0)
    assert torch.equal(goal, want_goal)

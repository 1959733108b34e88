"""Config-built diffusion transformers: tiny Flux.1, Flux.2 and SD3 for fast equivalence tests, and the
full-size Flux.1-dev, FLUX.2-klein-4B and SD3.5-medium configs for the meta device (shapes only, no memory).
Nothing downloaded."""

from __future__ import annotations

import torch

from sd_models import fresh

# Full-size configs: Flux.1-dev (FluxTransformer2DModel's defaults are dev's, with guidance), FLUX.2-klein-4B
# (diffusers' scripts/convert_flux2_to_diffusers.py, "klein-4b"), SD3.5-medium (its transformer/config.json).
FULL = {
    "Flux.1-dev": ("FluxTransformer2DModel", dict(in_channels=64, guidance_embeds=True)),
    "FLUX.2-klein-4B": ("Flux2Transformer2DModel", dict(
        in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=7680, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), guidance_embeds=False)),
    "SD3.5-medium": ("SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")),
}
TINY = {
    "Flux.1": ("FluxTransformer2DModel", dict(
        in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4), guidance_embeds=True)),
    "Flux.2": ("Flux2Transformer2DModel", dict(
        in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False)),
    "SD3": ("SD3Transformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm")),
}


def build(table: dict, name: str):
    import diffusers

    cls, config = table[name]
    return getattr(diffusers, cls)(**config)


def full_size(name: str):
    """The full-size transformer on the meta device: real module shapes, no storage."""
    with torch.device("meta"):
        return build(FULL, name)


@fresh
def tiny(name: str):
    torch.manual_seed(0)
    model = build(TINY, name).eval()
    with torch.no_grad():  # zero-initialised layers (norm_out, proj_out) would hide the blocks from the output
        for p in model.parameters():
            if (p == 0).all():
                p.normal_(0, 0.2)
    return model


def inputs(name: str, batch: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    """Forward arguments of the tiny transformer `name` (16 image tokens, 5 text tokens)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    t = torch.full((batch,), 0.5)
    if name == "SD3":
        return dict(hidden_states=r(batch, 4, 8, 8), encoder_hidden_states=r(batch, 5, 16),
                    pooled_projections=r(batch, 8), timestep=t * 1000)
    axes = 3 if name == "Flux.1" else 4
    ids = torch.zeros(16, axes)
    ids[:, -2], ids[:, -1] = torch.arange(16) // 4, torch.arange(16) % 4
    args = dict(hidden_states=r(batch, 16, 8), encoder_hidden_states=r(batch, 5, 16), timestep=t,
                img_ids=ids, txt_ids=torch.zeros(5, axes))
    if name == "Flux.1":
        args.update(pooled_projections=r(batch, 8), guidance=torch.full((batch,), 3.5))
    return args


def run(model, name: str, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(name, **kw), return_dict=False)[0]

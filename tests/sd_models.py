"""Config-built UNets and pipelines with the real SD1.5 and SDXL block layouts (small channel counts,
real cross-attention widths), for the kohya/LDM name tests and the peer comparisons. Nothing downloaded."""

from __future__ import annotations

import copy
from functools import lru_cache, wraps

import torch

SD15_CROSS, SDXL_CROSS = 768, 2048


def fresh(build):
    """Build once per argument set, hand out deep copies: copying is much faster than initialising again.

    The builds seed torch's global generator; each call leaves it where that build did, so a test drawing
    random numbers after building a model gets the same ones whether the model was built or copied."""
    cached = lru_cache(maxsize=None)(lambda *args, **kwargs: (build(*args, **kwargs), torch.get_rng_state()))

    @wraps(build)
    def fresh_copy(*args, **kwargs):
        model, rng = cached(*args, **kwargs)
        torch.set_rng_state(rng)
        return copy.deepcopy(model)

    return fresh_copy


@fresh
def sd15_unet(cross_dim: int = SD15_CROSS):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_dim, attention_head_dim=8, norm_num_groups=8,
    ).eval()


@fresh
def sdxl_unet(depths: tuple[int, int, int] = (1, 2, 10)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=depths, cross_attention_dim=SDXL_CROSS, attention_head_dim=8,
        norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 1280,
    ).eval()


@fresh
def clip(hidden: int, layers: int = 2, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=4, vocab_size=99, max_position_embeddings=16, bos_token_id=0,
                            eos_token_id=2, pad_token_id=1, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=8)


@fresh
def sd15_pipeline():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=clip(SD15_CROSS), tokenizer=None, unet=sd15_unet(),
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@fresh
def sdxl_pipeline():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=clip(768), text_encoder_2=clip(1280, projection=True), tokenizer=None,
        tokenizer_2=None, unet=sdxl_unet(), scheduler=EulerDiscreteScheduler())


def unet_inputs(unet, seed: int = 1) -> dict:
    """Inputs for one forward of either UNet (SDXL gets its added text/time conditioning)."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    inputs = {"sample": torch.randn(1, 4, 8, 8, generator=g), "timestep": torch.tensor([10]),
              "encoder_hidden_states": torch.randn(1, 3, cross, generator=g)}
    if unet.config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, generator=g),
                                       "time_ids": torch.randn(1, 6, generator=g)}
    return inputs

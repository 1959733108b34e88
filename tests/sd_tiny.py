"""Tiny Stable Diffusion pipelines (SD1-style and SDXL) with the digits base's real CLIPTokenizer, built from
configs and saved as diffusers folders: what the tests load, as users load theirs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def build_tokenizer(out_dir: Path):
    """The digits base's CLIPTokenizer (byte-level BPE with whole-word merges; 24 tokens at most)."""
    sys.path.insert(0, str(SAMPLES))
    from make_digits_sd import build_tokenizer as build

    return build(out_dir)


def build_pipeline(root: Path, *, prediction: str = "epsilon", width: int = 32, seed: int = 0):
    """UNet (2 levels, 32/64 channels), a 2-level VAE (x2 down: 32 px images, 16 px latents), a 2-layer CLIP."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(root / "_tokenizer")
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, norm_num_groups=8, attention_head_dim=8)
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False, prediction_type=prediction,
                              beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_pipeline(root: Path, **kw) -> Path:
    folder = root / "base"
    build_pipeline(root, **kw).save_pretrained(folder, safe_serialization=True)
    return folder


def save_sdxl_pipeline(root: Path, seed: int = 0, width2: int = 32) -> Path:
    """A tiny SDXL pipeline: two text encoders (the second with a projection, `width2` wide), micro-conditioned
    UNet. Real SDXL's encoders differ in width (768 and 1280), which is how single-file loaders tell them apart."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer(root / "_tokenizer")
    torch.manual_seed(seed)
    text = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                          vocab_size=len(tokenizer), max_position_embeddings=32, projection_dim=32,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    text2 = CLIPTextConfig(**{**text.to_dict(), "hidden_size": width2, "projection_dim": width2})
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=width2 + 6 * 8, cross_attention_dim=32 + width2, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text2),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    folder = root / "sdxl"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder

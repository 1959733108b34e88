"""Stand-in base models for tools that have files but no model: the real SD1.x / SD2.x / SDXL module trees
(diffusers UNet, HF CLIP text encoders) built from their configs on the meta device, so no memory is
allocated and nothing is downloaded. kohya names resolve against them exactly as against the real model."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import torch

_UNET = {
    "SD1.x": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8),
    "SD2.x": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                  attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "SDXL": dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
# (hidden, layers, intermediate, with projection) per text encoder
_TEXT = {"SD1.x": [(768, 12, 3072, False)], "SD2.x": [(1024, 23, 4096, False)],
         "SDXL": [(768, 12, 3072, False), (1280, 32, 5120, True)]}


def _clip(hidden: int, layers: int, intermediate: int, projection: bool) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                            num_attention_heads=hidden // 64, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


@lru_cache(maxsize=3)
def base_model(arch: str) -> Any:
    """A pipeline-like object (`.components`) with the named architecture's UNet and text encoders."""
    from diffusers import UNet2DConditionModel

    if arch not in _UNET:
        raise ValueError(f"no stand-in for base {arch!r}; known: {sorted(_UNET)}")
    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel(**_UNET[arch])}
        for i, spec in enumerate(_TEXT[arch]):
            parts["text_encoder" if i == 0 else "text_encoder_2"] = _clip(*spec)
    return SimpleNamespace(components=parts)

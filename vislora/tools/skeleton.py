"""Stand-in base models for tools that have files but no model: the real SD1.x / SD2.x / SDXL module trees
(diffusers UNet, HF CLIP text encoders) built from their configs on the meta device, so no memory is
allocated and nothing is downloaded. kohya names resolve against them exactly as against the real model.

The diffusion transformers' stand-ins (Flux.1, Flux.2, SD3) have the block counts of their largest public
models (Flux.1-dev 19 + 38, FLUX.2-dev 8 + 48, SD3.5-large 38 joint blocks with SD3.5-medium's 13 dual-attention
ones), so every name of a smaller model is there too; their widths are small, since names are all a stand-in
answers for (a file's widths are its own: a Linear's LoRA shapes are never refitted)."""

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


# family -> (diffusers class, config): block counts as large as the family's models have, widths small
_SMALL = dict(attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16)
_TRANSFORMER = {
    "Flux.1": ("FluxTransformer2DModel", dict(_SMALL, in_channels=8, num_layers=19, num_single_layers=38,
                                              pooled_projection_dim=8, axes_dims_rope=(2, 2, 4), guidance_embeds=True)),
    "Flux.2": ("Flux2Transformer2DModel", dict(_SMALL, in_channels=8, num_layers=8, num_single_layers=48,
                                               axes_dims_rope=(2, 2, 2, 2), guidance_embeds=True)),
    "SD3": ("SD3Transformer2DModel", dict(_SMALL, sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                                          num_layers=38, caption_projection_dim=16, pooled_projection_dim=8,
                                          pos_embed_max_size=8, dual_attention_layers=tuple(range(13)),
                                          qk_norm="rms_norm")),
}
# the text encoders each family's pipeline holds, in order: CLIP specs as _TEXT's, "t5" for T5-XXL's encoder
# (Flux.2's language models are not stood in for: their kohya names stay unresolved)
_TRANSFORMER_TEXT = {"Flux.1": [(768, 12, 3072, False), "t5"],
                     "SD3": [(768, 12, 3072, True), (1280, 32, 5120, True), "t5"], "Flux.2": []}
KNOWN = (*sorted(_TRANSFORMER), *sorted(_UNET))


def _t5() -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu"))


def _transformer(arch: str) -> dict[str, torch.nn.Module]:
    import diffusers

    cls, config = _TRANSFORMER[arch]
    parts = {"transformer": getattr(diffusers, cls)(**config)}
    for i, spec in enumerate(_TRANSFORMER_TEXT[arch]):
        parts["text_encoder" + (f"_{i + 1}" if i else "")] = _t5() if spec == "t5" else _clip(*spec)
    return parts


@lru_cache(maxsize=3)
def base_model(arch: str) -> Any:
    """A pipeline-like object (`.components`) with the named architecture's denoiser and text encoders."""
    from diffusers import UNet2DConditionModel

    if arch in _TRANSFORMER:
        with torch.device("meta"):
            return SimpleNamespace(components=_transformer(arch))
    if arch not in _UNET:
        raise ValueError(f"no stand-in for base {arch!r}; known: {list(KNOWN)}")
    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel(**_UNET[arch])}
        for i, spec in enumerate(_TEXT[arch]):
            parts["text_encoder" if i == 0 else "text_encoder_2"] = _clip(*spec)
    return SimpleNamespace(components=parts)

"""Targets in the transformers CLIPTextModel (the Stable Diffusion text encoder)."""

from .presets import ANY_PREFIX, Pattern, Preset

_ATTN = Pattern(ANY_PREFIX + r"self_attn\.(?:q_proj|k_proj|v_proj|out_proj)")
_MLP = Pattern(ANY_PREFIX + r"mlp\.(?:fc1|fc2)")

PRESETS = {
    "text.attn": Preset("text", (_ATTN,), "text encoder self-attention projections"),
    "text.mlp": Preset("text", (_MLP,), "text encoder MLP"),
    "text.all": Preset("text", (_ATTN, _MLP), "text encoder attention and MLP"),
    # SDXL's second text encoder (OpenCLIP ViT-bigG), the same layer names.
    "text2.attn": Preset("text2", (_ATTN,), "second text encoder (SDXL) self-attention projections"),
    "text2.mlp": Preset("text2", (_MLP,), "second text encoder (SDXL) MLP"),
    "text2.all": Preset("text2", (_ATTN, _MLP), "second text encoder (SDXL) attention and MLP"),
}

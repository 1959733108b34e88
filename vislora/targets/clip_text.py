"""Targets in the text encoders of diffusion pipelines: CLIP (transformers CLIPTextModel), T5
(T5EncoderModel: Flux's text_encoder_2, SD3's text_encoder_3) and decoder language models (Flux.2's
Mistral3 / Qwen3: `layers.N.self_attn.*_proj`, `mlp.gate/up/down_proj`).

`text`, `text2` and `text3` name the pipeline's first, second and third encoder (text_encoder,
text_encoder_2, text_encoder_3), whichever kind each is: the patterns of all three kinds are disjoint.
"""

from .presets import ANY_PREFIX, Pattern, Preset

_ATTN = (
    Pattern(ANY_PREFIX + r"self_attn\.(?:q_proj|k_proj|v_proj|out_proj|o_proj)"),  # CLIP; language models
    Pattern(ANY_PREFIX + r"block\.\d+\.layer\.0\.SelfAttention\.(?:q|k|v|o)"),  # T5
)
_MLP = (
    Pattern(ANY_PREFIX + r"mlp\.(?:fc1|fc2|gate_proj|up_proj|down_proj)"),  # CLIP; language models
    Pattern(ANY_PREFIX + r"block\.\d+\.layer\.1\.DenseReluDense\.(?:wi|wi_0|wi_1|wo)"),  # T5
)
_WHICH = {"text": "text encoder", "text2": "second text encoder (SDXL, SD3: CLIP-G; Flux: T5)",
          "text3": "third text encoder (SD3: T5)"}

PRESETS = {}
for _family, _what in _WHICH.items():
    PRESETS[f"{_family}.attn"] = Preset(_family, _ATTN, f"{_what} self-attention projections")
    PRESETS[f"{_family}.mlp"] = Preset(_family, _MLP, f"{_what} MLP / feed-forward")
    PRESETS[f"{_family}.all"] = Preset(_family, _ATTN + _MLP, f"{_what} attention and MLP")

"""Layer groups of the diffusers Flux transformers: FluxTransformer2DModel (Flux.1) and
Flux2Transformer2DModel (Flux.2, klein included).

Both have double-stream blocks `transformer_blocks.N` (image and text streams with joint attention) and
single-stream blocks `single_transformer_blocks.N`. They differ in the feed-forward (Flux.1 `ff.net.0.proj` /
`ff.net.2`, Flux.2 `ff.linear_in` / `ff.linear_out`), in the single blocks (Flux.1 split `attn.to_q/k/v`,
`proj_mlp`, `proj_out`; Flux.2 one fused `attn.to_qkv_mlp_proj` and `attn.to_out`) and in the modulation
(Flux.1 per block `norm1.linear`, `norm1_context.linear`, `norm.linear`; Flux.2 three shared
`*_modulation.linear` layers at the root).
"""

from .presets import Pattern

ROOT = r"^"  # patterns are anchored at the transformer's root: a UNet has `transformer_blocks` deeper down
DOUBLE = ROOT + r"transformer_blocks\.\d+\."
SINGLE = ROOT + r"single_transformer_blocks\.\d+\."
JOINT_ATTN = Pattern(DOUBLE + r"attn\.(?:to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)")

GROUPS: dict[str, tuple[Pattern, ...]] = {
    "attn": (JOINT_ATTN,),
    "ff": (Pattern(DOUBLE + r"ff(?:_context)?\.(?:net\.0\.proj|net\.2|linear_in|linear_out)"),),
    "single": (Pattern(SINGLE + r"(?:attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp|proj_out)"),  # Flux.1
               Pattern(SINGLE + r"attn\.(?:to_qkv_mlp_proj|to_out)")),  # Flux.2
    "mod": (Pattern(DOUBLE + r"norm1(?:_context)?\.linear"), Pattern(SINGLE + r"norm\.linear"),
            Pattern(ROOT + r"(?:double_stream_modulation_img|double_stream_modulation_txt|single_stream_modulation)"
                    r"\.linear"),
            Pattern(ROOT + r"norm_out\.linear")),
    "embed": (Pattern(ROOT + r"(?:x_embedder|context_embedder|proj_out)"),
              Pattern(ROOT + r"(?:time_text_embed|time_guidance_embed)\.\w+\.linear_[12]")),
}

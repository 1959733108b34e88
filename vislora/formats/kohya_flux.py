"""kohya names of Flux.1 (sd-scripts networks/lora_flux.py): BFL's original module names under `lora_unet_`,
mapped onto diffusers' FluxTransformer2DModel (the table of diffusers' `_convert_kohya_flux_lora_to_diffusers`
and its single-file checkpoint converter). Fused: `img_attn_qkv`, `txt_attn_qkv` (q, k, v) and a single
block's `linear1` (q, k, v and the MLP input, 4x wide)."""

from .kohya_fused import Layer, Section

QKV = (1, 1, 1)
DOUBLE = {
    "img_attn_qkv": Layer(("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
    "img_attn_proj": Layer(("attn.to_out.0",)),
    "img_mlp_0": Layer(("ff.net.0.proj",)),
    "img_mlp_2": Layer(("ff.net.2",)),
    "img_mod_lin": Layer(("norm1.linear",)),
    "txt_attn_qkv": Layer(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), QKV),
    "txt_attn_proj": Layer(("attn.to_add_out",)),
    "txt_mlp_0": Layer(("ff_context.net.0.proj",)),
    "txt_mlp_2": Layer(("ff_context.net.2",)),
    "txt_mod_lin": Layer(("norm1_context.linear",)),
}
SINGLE = {
    "linear1": Layer(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), (1, 1, 1, 4)),
    "linear2": Layer(("proj_out",)),
    "modulation_lin": Layer(("norm.linear",)),
}
TOP = {
    "img_in": Layer(("x_embedder",)),
    "txt_in": Layer(("context_embedder",)),
    "time_in_in_layer": Layer(("time_text_embed.timestep_embedder.linear_1",)),
    "time_in_out_layer": Layer(("time_text_embed.timestep_embedder.linear_2",)),
    "vector_in_in_layer": Layer(("time_text_embed.text_embedder.linear_1",)),
    "vector_in_out_layer": Layer(("time_text_embed.text_embedder.linear_2",)),
    "guidance_in_in_layer": Layer(("time_text_embed.guidance_embedder.linear_1",)),
    "guidance_in_out_layer": Layer(("time_text_embed.guidance_embedder.linear_2",)),
    **(FINAL := {"final_layer_linear": Layer(("proj_out",)),  # SD3's final layer is named the same
                 "final_layer_adaLN_modulation_1": Layer(("norm_out.linear",), swap=True)}),
}
SECTIONS = (
    Section("lora_unet_double_blocks_{i}_", "transformer_blocks.{i}.", DOUBLE),
    Section("lora_unet_single_blocks_{i}_", "single_transformer_blocks.{i}.", SINGLE),
    Section("lora_unet_", "", TOP),
)

# Flux.2 keeps BFL's names for its blocks (diffusers' _convert_kohya_flux2_lora_to_diffusers): the same fused
# qkv, its own feed-forward names, and a single block's linear1 / linear2 are diffusers' fused
# to_qkv_mlp_proj / to_out as they are. Told from Flux.1 by shapes (kohya_dit.is_flux2).
DOUBLE_2 = {**{k: v for k, v in DOUBLE.items() if "_mod_" not in k},
            "img_mlp_0": Layer(("ff.linear_in",)), "img_mlp_2": Layer(("ff.linear_out",)),
            "txt_mlp_0": Layer(("ff_context.linear_in",)), "txt_mlp_2": Layer(("ff_context.linear_out",))}
SINGLE_2 = {"linear1": Layer(("attn.to_qkv_mlp_proj",)), "linear2": Layer(("attn.to_out",))}
SECTIONS_2 = (
    Section("lora_unet_double_blocks_{i}_", "transformer_blocks.{i}.", DOUBLE_2),
    Section("lora_unet_single_blocks_{i}_", "single_transformer_blocks.{i}.", SINGLE_2),
)

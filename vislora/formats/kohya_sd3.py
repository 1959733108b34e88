"""kohya names of SD3 / SD3.5 (sd-scripts networks/lora_sd3.py): Stability's MMDiT module names under
`lora_unet_`, mapped onto diffusers' SD3Transformer2DModel (the table of diffusers' single-file SD3
converter). Fused: `attn_qkv` and `attn2_qkv` (q, k, v) of each stream. The text encoders are lora_te1
(CLIP-L), lora_te2 (CLIP-G) and lora_te3 (T5), named by kohya_names."""

from .kohya_flux import FINAL, QKV
from .kohya_fused import Layer, Section

JOINT = {
    "x_block_attn_qkv": Layer(("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
    "x_block_attn_proj": Layer(("attn.to_out.0",)),
    "x_block_attn2_qkv": Layer(("attn2.to_q", "attn2.to_k", "attn2.to_v"), QKV),
    "x_block_attn2_proj": Layer(("attn2.to_out.0",)),
    "x_block_mlp_fc1": Layer(("ff.net.0.proj",)),
    "x_block_mlp_fc2": Layer(("ff.net.2",)),
    "x_block_adaLN_modulation_1": Layer(("norm1.linear",)),
    "context_block_attn_qkv": Layer(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), QKV),
    "context_block_attn_proj": Layer(("attn.to_add_out",)),
    "context_block_mlp_fc1": Layer(("ff_context.net.0.proj",)),
    "context_block_mlp_fc2": Layer(("ff_context.net.2",)),
    "context_block_adaLN_modulation_1": Layer(("norm1_context.linear",), swap=True),  # the last block's only
}
TOP = {
    "x_embedder_proj": Layer(("pos_embed.proj",)),
    "context_embedder": Layer(("context_embedder",)),
    "t_embedder_mlp_0": Layer(("time_text_embed.timestep_embedder.linear_1",)),
    "t_embedder_mlp_2": Layer(("time_text_embed.timestep_embedder.linear_2",)),
    "y_embedder_mlp_0": Layer(("time_text_embed.text_embedder.linear_1",)),
    "y_embedder_mlp_2": Layer(("time_text_embed.text_embedder.linear_2",)),
    **FINAL,
}
SECTIONS = (
    Section("lora_unet_joint_blocks_{i}_", "transformer_blocks.{i}.", JOINT),
    Section("lora_unet_", "", TOP),
)

"""Targets in timm VisionTransformer and relatives (DeiT, EVA, BEiT-style names: blocks.N.attn / .mlp)."""

from .presets import ANY_PREFIX, Pattern, Preset

_BLOCK = ANY_PREFIX + r"blocks\.\d+\."
_ATTN = Pattern(_BLOCK + r"attn\.(?:qkv|q_proj|k_proj|v_proj|proj)")
_MLP = Pattern(_BLOCK + r"mlp\.(?:fc1|fc2|fc1_g|fc1_x)")

PRESETS = {
    "vit.qv": Preset(
        "vit",
        # Fused qkv: only the q and v thirds of the output rows; split projections: q_proj and v_proj.
        (Pattern(_BLOCK + r"attn\.qkv", slices=("q", "v")), Pattern(_BLOCK + r"attn\.(?:q_proj|v_proj)")),
        "query and value projections (q/v slices of the fused qkv)",
    ),
    "vit.attn": Preset("vit", (_ATTN,), "attention: qkv and output projection"),
    "vit.mlp": Preset("vit", (_MLP,), "MLP: fc1 and fc2"),
    "vit.all": Preset("vit", (_ATTN, _MLP), "every linear layer of the blocks"),
}

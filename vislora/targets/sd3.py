"""Layer groups of the diffusers SD3Transformer2DModel (SD3, SD3.5): joint (MMDiT) blocks only.

`transformer_blocks.N` has the joint attention of the image and text streams (`attn`), on SD3.5's first
blocks a second, image-only attention (`attn2`, "dual attention"), and both streams' feed-forwards; the
last block is "context pre-only" (no `to_add_out` and no `ff_context`).
"""

from .flux import DOUBLE, JOINT_ATTN, ROOT
from .presets import Pattern

GROUPS: dict[str, tuple[Pattern, ...]] = {
    "attn": (JOINT_ATTN, Pattern(DOUBLE + r"attn2\.(?:to_q|to_k|to_v|to_out\.0)")),
    "ff": (Pattern(DOUBLE + r"ff(?:_context)?\.(?:net\.0\.proj|net\.2)"),),
    "single": (),
    "mod": (Pattern(DOUBLE + r"norm1(?:_context)?\.linear"), Pattern(ROOT + r"norm_out\.linear")),
    "embed": (Pattern(ROOT + r"(?:pos_embed\.proj|context_embedder|proj_out)"),
              Pattern(ROOT + r"time_text_embed\.\w+\.linear_[12]")),
}

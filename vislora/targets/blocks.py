"""Block names of a diffusers UNet, as users know them: diffusers sections and the LoRA Block Weight ids.

Two spellings of "where in the UNet is this layer":

- diffusers: `down_blocks.N` / `mid_block` / `up_blocks.N` (section, index), aliases `down` / `mid` / `up`.
- sd-webui-lora-block-weight (A1111's "lbw"): `BASE` (the text encoders), `IN00`..`IN11`, `M00`,
  `OUT00`..`OUT11`: the original LDM UNet's `input_blocks.{n}`, `middle_block`, `output_blocks.{n}`.

Sources: the diffusers -> LDM table of specs/formats.md section 1.2 (built from kohya's
sdxl_model_util, diffusers' _maybe_map_sgm_blocks_to_diffusers and A1111's convert_diffusers_name_to_compvis),
and hako-mikan/sd-webui-lora-block-weight, scripts/lora_block_weight.py (BLOCKID26/17/12/20, to26(),
ratiodealer(), DEF_WEIGHT_PRESET). There a module's ratio is the value of the LDM block whose name is in its
key, text-encoder keys take BASE, and keys of no block (time embedding, conv_out) keep 1; a 17 / 12 value
list is spread onto the 26 ids with 0 for the ids it lacks (IN00, IN03, IN06, IN09-11, OUT00-02 for 17).
"""

from __future__ import annotations

import re

# The 26 ids of the full model, in the order a 26-value list gives them.
LBW_IDS_26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))

# Which ids a list of each length gives, in order (SD1.x/2.x: 17 LoRA, 26 LyCORIS/LoCon; SDXL: 12, 20).
LBW_LAYOUTS: dict[int, tuple[str, ...]] = {
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"),
    26: LBW_IDS_26,
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"),
    20: ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9))),
}
LBW_MODEL = {17: "SD1.x/SD2.x LoRA", 26: "SD1.x/SD2.x LyCORIS/LoCon", 12: "SDXL LoRA", 20: "SDXL LyCORIS/LoCon"}

# Named presets (17 values, as the extension ships them).
LBW_PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}

# Section words users may write for the diffusers sections.
SECTION_ALIASES = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks",
                   "down_blocks": "down_blocks", "mid_block": "mid_block", "up_blocks": "up_blocks",
                   # diffusion transformers (Flux double / single blocks, SD3 joint blocks), by index: "single.10"
                   "double": "transformer_blocks", "joint": "transformer_blocks", "single": "single_transformer_blocks"}

# diffusers UNet path -> LDM block, with L = layers_per_block (2 in SD1.x, SD2.x and SDXL):
#   down_blocks.i.{resnets,attentions}.j -> IN{(L+1)i + j + 1}; down_blocks.i.downsamplers -> IN{(L+1)i + L + 1}
#   mid_block -> M00;   up_blocks.i.{resnets,attentions}.j -> OUT{(L+1)i + j}; up_blocks.i.upsamplers -> OUT{(L+1)i + L}
#   conv_in -> IN00
_LDM_RULES: tuple[tuple[re.Pattern, str, object], ...] = (
    (re.compile(r"down_blocks\.(\d+)\.(?:resnets|attentions)\.(\d+)\."), "IN", lambda i, j, L: (L + 1) * i + j + 1),
    (re.compile(r"down_blocks\.(\d+)\.downsamplers\."), "IN", lambda i, L: (L + 1) * i + L + 1),
    (re.compile(r"up_blocks\.(\d+)\.(?:resnets|attentions)\.(\d+)\."), "OUT", lambda i, j, L: (L + 1) * i + j),
    (re.compile(r"up_blocks\.(\d+)\.upsamplers\."), "OUT", lambda i, L: (L + 1) * i + L),
    (re.compile(r"mid_block\."), "M", lambda L: 0),
    (re.compile(r"conv_in$"), "IN", lambda L: 0),
)
_SECTION = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


def unet_section(path: str) -> tuple[str, int | None] | None:
    """("down_blocks", 1) for "down_blocks.1.attentions.0...", ("mid_block", None), or None (conv_in ...)."""
    m = _SECTION.match(path)
    if m is None:
        return None
    return ("mid_block", None) if m.group(3) else (m.group(1), int(m.group(2)))


def ldm_block(path: str, layers_per_block: int = 2) -> str | None:
    """The lbw id of a module of a diffusers UNet ("IN04", "M00", "OUT11"), or None outside the blocks."""
    for pattern, prefix, index in _LDM_RULES:
        m = pattern.match(path)
        if m:
            n = index(*map(int, m.groups()), layers_per_block)
            return f"{prefix}{n:02d}"
    return None

"""Denoiser families, told apart by module names alone: each family lists names only it has.

A signature is a regex searched in a module name as files and models spell it: diffusers paths with or without
their component prefix (`transformer.`, `unet.`), kohya names (`lora_unet_...`, with BFL's original Flux names
and SD3's `joint_blocks`) and OneTrainer's `lora_transformer_...`. The first family (in table order) with a
matching name wins; a file that names only layers several families share (say Flux double-block attention
alone) has no family, and loading falls back to the shape check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_T = r"^(?:transformer\.)?"  # diffusers transformer paths, bare or in a pipeline file


@dataclass(frozen=True)
class Family:
    name: str
    component: str  # the pipeline component that holds the denoiser
    signatures: tuple[str, ...]


FAMILIES: tuple[Family, ...] = (
    Family("Flux.2", "transformer", (
        _T + r"single_transformer_blocks\.\d+\.attn\.to_(?:qkv_mlp_proj|out)$",
        _T + r"transformer_blocks\.\d+\.ff(?:_context)?\.linear_(?:in|out)$",
        _T + r"(?:double_stream_modulation_img|double_stream_modulation_txt|single_stream_modulation)\.",
        r"^lora_transformer_single_transformer_blocks_\d+_attn_to_qkv_mlp_proj$",
    )),
    Family("Flux.1", "transformer", (
        _T + r"single_transformer_blocks\.\d+\.(?:proj_mlp|norm\.linear|attn\.to_[qkv])$",
        _T + r"time_text_embed\.guidance_embedder\.",
        r"^lora_unet_(?:double|single)_blocks_\d+_",
        r"^lora_transformer_single_transformer_blocks_\d+_(?:proj_mlp|attn_to_[qkv])$",
    )),
    Family("SD3", "transformer", (
        _T + r"transformer_blocks\.\d+\.attn2\.",
        _T + r"pos_embed\.proj$",
        r"^lora_unet_joint_blocks_\d+_",
        r"^(?:lora_te3_|text_encoder_3\.)",
    )),
    Family("UNet", "unet", (
        r"^(?:unet\.)?(?:down_blocks|up_blocks|mid_block)\.",
        r"^lora_unet_(?:down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)_",
    )),
)
_COMPILED = tuple((f, tuple(re.compile(s) for s in f.signatures)) for f in FAMILIES)


def family_of(names: Iterable[str]) -> Family | None:
    """The first family one of whose signatures some name matches, or None."""
    names = list(names)
    for family, signatures in _COMPILED:
        if any(s.search(n) for s in signatures for n in names):
            return family
    return None

"""Denoiser families, told apart by module names alone: each family lists names only it has.

A signature is a regex searched in a module name as files and models spell it: diffusers paths with or without
their component prefix (`transformer.`, `unet.`), OneTrainer's `lora_transformer_...` and kohya names
(`lora_unet_...`, with BFL's original Flux names and SD3's `joint_blocks`). The first family (in table order) with a
matching name wins; a file that names only layers several families share (say Flux double-block attention
alone) has no family, and loading falls back to the shape check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

@dataclass(frozen=True)
class Family:
    """`paths`: regexes over diffusers module paths from the denoiser's root (no anchors), matched bare, under
    the component prefix, and underscore-mangled under `lora_<component>_` (OneTrainer, and kohya_dit's
    reading of original names) or `lycoris_` (LyCORIS' wrapper on the denoiser: SimpleTuner); `names`: regexes over other spellings (kohya's original layouts)."""

    name: str
    component: str  # the pipeline component that holds the denoiser
    paths: tuple[str, ...]
    names: tuple[str, ...] = ()
    modelspec: str = ""  # its `modelspec.architecture` (SAI model spec, as kohya writes it), without "/lora"

    def signatures(self) -> tuple[str, ...]:
        dotted = tuple(rf"^(?:{self.component}\.)?{p}" for p in self.paths)
        mangled = tuple(rf"^(?:lora_{self.component}|lycoris)_" + p.replace(r"\.", "_") for p in self.paths)
        return dotted + mangled + self.names


FAMILIES: tuple[Family, ...] = (
    Family("Flux.2", "transformer", (
        r"single_transformer_blocks\.\d+\.attn\.to_(?:qkv_mlp_proj|out)$",
        r"transformer_blocks\.\d+\.ff(?:_context)?\.linear_(?:in|out)$",
        r"(?:double_stream_modulation_img|double_stream_modulation_txt|single_stream_modulation)\.",
    ), (), "flux-2"),
    Family("Flux.1", "transformer", (
        r"single_transformer_blocks\.\d+\.(?:proj_mlp|norm\.linear|attn\.to_[qkv])$",
        r"time_text_embed\.guidance_embedder\.",
    ), (r"^lora_unet_(?:double|single)_blocks_\d+_",), "flux-1-dev"),
    Family("SD3", "transformer", (
        r"transformer_blocks\.\d+\.attn2\.",
        r"pos_embed\.proj$",
    ), (r"^lora_unet_joint_blocks_\d+_", r"^(?:lora_te3_|text_encoder_3\.)"), "stable-diffusion-3"),
    Family("UNet", "unet", (
        r"(?:down_blocks|up_blocks|mid_block)\.",
    ), (r"^lora_unet_(?:down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)_",)),
)
_COMPILED = tuple((f, tuple(re.compile(s) for s in f.signatures())) for f in FAMILIES)


def family_of(names: Iterable[str]) -> Family | None:
    """The first family one of whose signatures some name matches, or None."""
    names = list(names)
    for family, signatures in _COMPILED:
        if any(s.search(n) for s in signatures for n in names):
            return family
    return None


MODELSPEC_KEY = "modelspec.architecture"


def family_named(metadata: dict[str, str]) -> Family | None:
    """The family a file's `modelspec.architecture` names ("flux-1-dev/lora" -> Flux.1), or None."""
    arch = metadata.get(MODELSPEC_KEY, "").partition("/")[0]
    return next((f for f in FAMILIES if f.modelspec and arch.startswith(f.modelspec)), None)

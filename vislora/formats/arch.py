"""Which base model an adapter was made for, from its tensor shapes alone, and which one a model is.

The cross-attention key/value projections (`attn2.to_k`, `attn2.to_v`) read the text encoder's width:
768 for SD1.x (CLIP-L), 1024 for SD2.x (OpenCLIP-H), 2048 for SDXL (CLIP-L and bigG concatenated). A
second text encoder (`lora_te2_`, `text_encoder_2.`) also means SDXL. Diffusion transformers (Flux.1,
Flux.2, SD3) are told apart from each other and from UNets by module names (`targets.families`). Used by
`inspect` and by loading, which refuses a file made for another base before any weight changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..components import components, prefixed
from ..functional import KINDS
from ..targets.families import family_of  # noqa: F401 (re-exported for tools)

BY_CROSS_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_CROSS_KV = re.compile(r"attn2[._]to_[kv]$")
_SECOND_TE = ("lora_te2_", "text_encoder_2.")


@dataclass(frozen=True)
class Arch:
    """A base architecture as far as names and shapes tell: `name` is "SD1.x", "SD2.x", "SDXL", "Flux.1",
    "Flux.2", "SD3" or None (unknown); `family` the denoiser family ("UNet", "Flux.1", ...) or None."""

    name: str | None
    cross_width: int | None = None
    text_encoders: int = 0
    family: str | None = None

    def __str__(self) -> str:
        if self.name:
            return self.name
        if self.cross_width:
            return f"cross-attention width {self.cross_width}"
        return f"a {self.family}" if self.family else "unknown"


def in_features(kind: str, factors: Mapping[str, torch.Tensor]) -> int | None:
    """The base weight's input width (dim 1) that a module's factors were made for, as the kind reads it."""
    read = getattr(KINDS.get(kind), "in_features", None)
    try:
        return None if read is None else read(factors)
    except KeyError:  # factors missing: the shape checks report it
        return None


def of_file(modules: Mapping[str, Any]) -> Arch:
    """From parsed modules (path -> object with `kind` and `factors`): the family by names, a UNet's base by
    its cross-attention widths."""
    family = family_of(modules)
    if family is not None and family.name != "UNet":
        return Arch(family.name, None, _encoders(modules), family.name)
    unet = "UNet" if family else None
    widths: dict[int, int] = {}
    for path, w in modules.items():
        if _CROSS_KV.search(path):
            width = in_features(w.kind, w.factors)
            if width:
                widths[width] = widths.get(width, 0) + 1
    two = any(p.startswith(_SECOND_TE) for p in modules)
    encoders = _encoders(modules)
    if not widths:
        return Arch("SDXL" if two else None, None, encoders, unet)
    width = max(widths, key=widths.get)
    return Arch(BY_CROSS_WIDTH.get(width), width, encoders, "UNet")


def _encoders(modules: Mapping[str, Any]) -> int:
    """How many text encoders a file adapts, by its highest one (lora_te3_ / text_encoder_3.: three)."""
    for n, prefixes in ((3, ("lora_te3_", "text_encoder_3.")), (2, _SECOND_TE), (1, ("lora_te", "text_encoder."))):
        if any(p.startswith(prefixes) for p in modules):
            return n
    return 0


def of_model(model: Any) -> Arch:
    """The model's family (by module names), a UNet's cross-attention width (from its attn2.to_k layers) and
    its text encoders."""
    parts = components(model)
    encoders = sum(1 for c in parts if c.startswith("text_encoder"))
    family = family_of(prefixed(c, p) for c, root in parts.items() for p, _ in root.named_modules())
    if family is not None and family.name != "UNet":
        return Arch(family.name, None, encoders, family.name)
    width = None
    for root in parts.values():
        for path, module in root.named_modules():
            base = getattr(module, "base_layer", module)
            if _CROSS_KV.search(path) and isinstance(base, nn.Linear):
                width = base.in_features
                break
        if width:
            break
    return Arch(BY_CROSS_WIDTH.get(width) if width else None, width, encoders, family.name if family else None)


def shape_hint(mismatches: list[tuple[str, str, tuple, tuple]]) -> str:
    """" The file looks made for SD1.x; this model is SDXL." from a cross-attention key's down factor among
    shape mismatches (module, factor, model needs, file has), or ""."""
    for key, factor, want, got in mismatches:
        if factor == "down" and _CROSS_KV.search(key) and len(got) == 2:
            source = BY_CROSS_WIDTH.get(got[1], f"cross-attention width {got[1]}")
            target = BY_CROSS_WIDTH.get(want[1], f"cross-attention width {want[1]}")
            return f" The file looks made for {source}; this model is {target}."
    return ""


def mismatch(file_arch: Arch, model_arch: Arch) -> str | None:
    """Why a file made for one base does not fit this model, naming both; None when they agree or either
    is unknown."""
    if not (file_arch.name or model_arch.name):
        return None  # neither is a known base: the shape check lists what differs
    if file_arch.family and model_arch.family and file_arch.family != model_arch.family:
        return (f"the file was made for {file_arch}; this model is {model_arch} ({file_arch.family} and "
                f"{model_arch.family} are different model families)")
    if file_arch.cross_width and model_arch.cross_width and file_arch.cross_width != model_arch.cross_width:
        return (f"the file was made for {file_arch}; this model is {model_arch} (cross-attention width "
                f"{file_arch.cross_width} in the file, {model_arch.cross_width} in the model)")
    return None

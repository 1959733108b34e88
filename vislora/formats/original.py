"""Files keyed by the original checkpoint's module names under `diffusion_model.` (ComfyUI's generic layout,
which ai-toolkit and others write for Flux): `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`
(or `.lora_down.weight`, `.lora.down.weight`), `.alpha`, and LyCORIS parts (`.hada_w1_a`, `.lokr_w1`,
`.dora_scale`, ...). They name the same modules as kohya's `lora_unet_` names, with dots where kohya has
underscores, so they are read as those: keys renamed, then kohya's reader (Flux's and SD3's fused layers
split exactly onto diffusers' modules; UNets' LDM names resolved against the model). Read only: vislora
writes kohya's names for these models, which every consumer of this layout also reads.

ComfyUI's text-encoder keys (`text_encoders.clip_l.transformer.<path>`, `clip_g`) become `lora_te1_` /
`lora_te2_`, the first and second CLIP of every pipeline that has them; its T5 keys are refused (the T5 is
`text_encoder_2` in Flux and `text_encoder_3` in SD3, which the names do not say).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import AdapterFormatError
from . import kohya
from .adapter import AdapterFile

FORMAT = "comfy"
WRITES = False  # read only (not a `--to` target)
PREFIX = "diffusion_model."
ENCODERS = {"text_encoders.clip_l.transformer.": "lora_te1_", "text_encoders.clip_g.transformer.": "lora_te2_"}
# LoRA part spellings -> kohya's (longest first); any other part is the key's last segment, kept as it is
# (alpha, dora_scale and LyCORIS' hada_*, lokr_*, diff parts are spelt the same in both layouts).
LORA_PARTS = (("lora_linear_layer.down.weight", "lora_down.weight"), ("lora_linear_layer.up.weight", "lora_up.weight"),
              ("lora.down.weight", "lora_down.weight"), ("lora.up.weight", "lora_up.weight"),
              ("lora_down.weight", "lora_down.weight"), ("lora_up.weight", "lora_up.weight"),
              ("lora_A.weight", "lora_down.weight"), ("lora_B.weight", "lora_up.weight"),
              ("lora_mid.weight", "lora_mid.weight"))

resolve, fit, component_of = kohya.resolve, kohya.fit, kohya.component_of


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return any(k.startswith(PREFIX) for k in tensors)


def split_part(key: str) -> tuple[str, str]:
    """(module path, kohya part) of a key below its prefix."""
    for spelling, part in LORA_PARTS:
        if key.endswith("." + spelling):
            return key[: -len(spelling) - 1], part
    module, _, part = key.rpartition(".")
    return module, part


def kohya_key(key: str) -> str | None:
    """The kohya key of a `diffusion_model.` / `text_encoders.` key, or None for a key of neither."""
    for prefix, kohya_prefix in ((PREFIX, "lora_unet_"), *ENCODERS.items()):
        if key.startswith(prefix):
            module, part = split_part(key[len(prefix):])
            return f"{kohya_prefix}{module.replace('.', '_')}.{part}"
    return None


def renamed(tensors: dict[str, torch.Tensor], rename, path: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors under `rename(key)`; keys it gives None for, or two keys one name, are an error."""
    out: dict[str, torch.Tensor] = {}
    strays = []
    for key, value in tensors.items():
        new = rename(key)
        if new is None:
            strays.append(key)
        elif new in out:
            raise AdapterFormatError(f"two keys of module {new.partition('.')[0]!r} are both its {new.partition('.')[2]!r}"
                                     " (two spellings of one key?)", path=path, category="duplicate")
        else:
            out[new] = value
    if strays:
        raise AdapterFormatError(f"{len(strays)} keys are not {what} adapter tensors, e.g. {strays[:5]} (a file "
                                 "mixing naming schemes?)", path=path, category="unknown-keys")
    return out


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, **options: Any) -> AdapterFile:
    adapter = kohya.read(renamed(tensors, kohya_key, path, f"{PREFIX} / text_encoders.clip_*"), metadata, path)
    adapter.format = FORMAT
    return adapter

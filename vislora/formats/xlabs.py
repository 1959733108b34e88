"""XLabs' Flux LoRA files (x-flux's attention processors): `double_blocks.N.processor.qkv_lora1.down.weight`
(optionally under `diffusion_model.`), `.up.weight`, no alpha (scale 1). One LoRA per original fused layer:

    double block  qkv_lora1 / proj_lora1    image stream: fused q, k, v; output projection
                  qkv_lora2 / proj_lora2    text stream: the same
    single block  qkv_lora / proj_lora      fused q, k, v (3 x width, not linear1); proj_out

The map is diffusers' `_convert_xlabs_flux_lora_to_diffusers`; the fused q, k, v split exactly as kohya's
(kohya_fused: a dense up gives each part the whole down and its rows). Read only.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import AdapterFormatError
from . import kohya, kohya_fused
from .adapter import AdapterFile
from .kohya_flux import QKV
from .kohya_fused import Layer, Section
from .original import renamed

FORMAT = "xlabs"
WRITES = False
MARK = ".processor."
SECTIONS = (
    Section("double_blocks.{i}.processor.", "transformer_blocks.{i}.", {
        "qkv_lora1": Layer(("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
        "proj_lora1": Layer(("attn.to_out.0",)),
        "qkv_lora2": Layer(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), QKV),
        "proj_lora2": Layer(("attn.to_add_out",)),
    }),
    Section("single_blocks.{i}.processor.", "single_transformer_blocks.{i}.", {
        "qkv_lora": Layer(("attn.to_q", "attn.to_k", "attn.to_v"), QKV),
        "proj_lora": Layer(("proj_out",)),
    }),
)
PARTS = {"down.weight": "lora_down.weight", "up.weight": "lora_up.weight"}

resolve, fit, component_of = kohya.resolve, kohya.fit, kohya.component_of


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return any(MARK in k and k.removeprefix("diffusion_model.").startswith(("double_blocks.", "single_blocks."))
               for k in tensors)


def _key(key: str) -> str | None:
    """`[diffusion_model.]double_blocks.0.processor.qkv_lora1.down.weight` -> `double_blocks.0.processor.qkv_lora1`
    `.lora_down.weight` (the module keeps its dotted name; kohya's parts)."""
    module, _, part = key.removeprefix("diffusion_model.").partition(".processor.")
    layer, _, part = part.partition(".")
    return f"{module}.processor.{layer}|{PARTS[part]}" if part in PARTS and MARK not in part else None


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, **options: Any) -> AdapterFile:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in renamed(tensors, _key, path, "XLabs").items():
        module, _, part = key.partition("|")
        grouped.setdefault(module, {})[part] = value
    modules = {name: kohya.module_weights(name, parts, path) for name, parts in sorted(grouped.items())}
    split = kohya_fused.to_diffusers(modules, SECTIONS, path)
    unknown = sorted(n for n in split if not n.startswith(kohya_fused.TRANSFORMER_PREFIX + "_"))
    if unknown:
        raise AdapterFormatError(f"{len(unknown)} XLabs modules are not x-flux's LoRA layers (qkv_lora1/2, "
                                 f"proj_lora1/2 of a double block, qkv_lora/proj_lora of a single block): "
                                 f"{unknown[:5]}", path=path, category="unknown-keys")
    return AdapterFile(path, FORMAT, split, {}, None, metadata)

"""PEFT adapter folders: `adapter_model.safetensors` + `adapter_config.json`, as `PeftModel.from_pretrained`
and `save_pretrained` use them (formats spec section 5.5). Reading is peft_diffusers' `folder`; this writes.

Keys: `base_model.model.<path>.lora_A.weight` / `.lora_B.weight`; modules_to_save as full weights under
`base_model.model.<path>`. The config holds r / lora_alpha (the most common), rank_pattern / alpha_pattern
for the rest, target_modules (exact paths), and for timm models the `auto_mapping` PEFT records. A pipeline
adapter becomes one folder per component (`unet/`, `text_encoder/`), as diffusers keeps them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import AdapterFile, container, peft_diffusers

PREFIX = "base_model.model."
TIMM_VIT = {"base_model_class": "VisionTransformer", "parent_library": "timm.models.vision_transformer"}


def config(entries: dict[str, tuple[int, float]], modules_to_save: list[str], timm: bool, dora: bool) -> dict:
    """adapter_config.json for {path: (rank, alpha)}: LoraConfig fields PEFT reads."""
    flat = json.loads(peft_diffusers.lora_adapter_metadata({p: ("", r, a) for p, (r, a) in entries.items()},
                                                           {""} if dora else set()))
    cfg = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
        "bias": "none", "fan_in_fan_out": False, "lora_dropout": 0.0, "init_lora_weights": True,
        "modules_to_save": modules_to_save or None, **flat,
    }
    if timm:
        cfg["auto_mapping"] = TIMM_VIT
    return cfg


def _write_one(folder: Path, modules: dict, extra: dict[str, torch.Tensor]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, tuple[int, float]] = {}
    for path, w in modules.items():
        found, rank, alpha = peft_diffusers.module_tensors(path, w)
        tensors.update({PREFIX + k: v for k, v in found.items()})
        entries[path] = (rank, alpha)
    tensors.update({PREFIX + k: v for k, v in extra.items()})
    saved = sorted({k.rpartition(".")[0] for k in extra})
    timm = any(p.startswith("blocks.") for p in modules)
    folder.mkdir(parents=True, exist_ok=True)
    container.write(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    dora = bool(peft_diffusers.dora_components(AdapterFile("", "", modules)))
    payload = json.dumps(config(entries, saved, timm, dora), indent=2, sort_keys=True)
    container.write_bytes(folder / "adapter_config.json", payload.encode())


def write_folder(path: str | os.PathLike, adapter: AdapterFile) -> Path:
    """Write `adapter` as a PEFT folder at `path` (subfolders per component for pipeline adapters)."""
    path = Path(path)
    groups: dict[str, tuple[dict, dict]] = {}
    for full, w in adapter.modules.items():
        comp = peft_diffusers.component(full)
        groups.setdefault(comp, ({}, {}))[0][full[len(comp) + 1:] if comp else full] = w
    for key, value in adapter.extra.items():
        comp = peft_diffusers.component(key)
        groups.setdefault(comp, ({}, {}))[1][key[len(comp) + 1:] if comp else key] = value
    for comp, (modules, extra) in groups.items():
        _write_one(path / comp if comp else path, modules, extra)
    return path

"""PEFT adapter folders: `adapter_model.safetensors` + `adapter_config.json`, as `PeftModel.from_pretrained`
and `save_pretrained` use them (formats spec section 5.5). Reading one folder is peft_diffusers' `folder`.

Keys: `base_model.model.<path>.lora_A.weight` / `.lora_B.weight`; modules_to_save as full weights under
`base_model.model.<path>`. The config holds r / lora_alpha (the most common), rank_pattern / alpha_pattern
for the rest, target_modules (exact paths), and for timm models the `auto_mapping` PEFT records. A pipeline
adapter becomes one folder per component (`OUT/unet/`, `OUT/text_encoder/`), as PEFT's DreamBooth example
saves each `PeftModel`; `components_in` finds such a set and `combine` reads it back as one adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from ..components import ADAPTABLE
from ..errors import AdapterFormatError, UnsafeFormatError
from ..basics import write_bytes
from . import container, peft_diffusers
from .adapter import AdapterFile

FORMAT = "peft"  # a folder, written by `save`, read by `read_folder`; never detected in a single file
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
    write_bytes(folder / "adapter_config.json", payload.encode())


def save(path: str | os.PathLike, adapter: AdapterFile) -> Path:
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


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "adapter_model.bin")


def read_folder(path: Path, read_file: Callable[..., AdapterFile]) -> AdapterFile:
    """A PEFT folder (its adapter_model.safetensors read with the scale settings of adapter_config.json), or a
    set of them, one per pipeline component, read as one adapter. Any folder is taken for one, so a folder
    without the file gets the container's missing-file error."""
    parts = components_in(path)
    if parts:
        return combine({comp: read_folder(sub, read_file) for comp, sub in parts.items()}, path)
    file, options = peft_diffusers.folder(path)
    return read_file(file, **options)


def components_in(path: Path) -> dict[str, Path] | None:
    """{component: subfolder} when `path` holds one PEFT folder per pipeline component and no adapter file of
    its own, else None. A subfolder with adapter files that is not a component (ADAPTABLE) is an error, as is
    a pickled adapter_model.bin without its safetensors twin: nothing of the set may be dropped silently."""
    if any((path / f).exists() for f in ADAPTER_FILES):
        return None
    subs = {d.name: d for d in sorted(path.iterdir()) if d.is_dir() and any((d / f).exists() for f in ADAPTER_FILES)}
    unknown = [d for name, d in subs.items() if name not in ADAPTABLE]
    if unknown:
        raise AdapterFormatError(f"{[d.name for d in unknown]} hold adapters but are not pipeline components "
                                 f"({', '.join(ADAPTABLE)}); rename or move them", path=unknown[0],
                                 category="unknown-component")
    for d in subs.values():
        if not (d / ADAPTER_FILES[0]).exists() and (d / "adapter_model.bin").exists():
            raise UnsafeFormatError("a pickled adapter_model.bin; vislora reads adapters from .safetensors only "
                                    "(save with safe_serialization=True)", path=d / "adapter_model.bin",
                                    category="pickle")
    return subs or None


def combine(parts: dict[str, AdapterFile], path: Path) -> AdapterFile:
    """One adapter from per-component PEFT files: module and full-tensor names get their component prefix."""
    for comp, part in parts.items():
        if part.format != peft_diffusers.FORMAT:
            raise AdapterFormatError(f"a {part.format} file in a PEFT folder set: {comp}/ must hold PEFT's "
                                     "adapter_model.safetensors", path=part.path, category="mixed-formats")
    modules = {f"{comp}.{name}": w for comp, part in parts.items() for name, w in part.modules.items()}
    extra = {f"{comp}.{key}": t for comp, part in parts.items() for key, t in part.extra.items()}
    metadata = {k: v for part in parts.values() for k, v in part.metadata.items()}
    return AdapterFile(str(path), peft_diffusers.FORMAT, modules, extra, None, metadata,
                       {comp: part.path for comp, part in parts.items()})

"""vislora's own files: the diffusers/PEFT key layout plus a per-module table in the metadata.

Tensors (one adapter per file, no adapter name in the keys):
    <prefix><path>.lora_A.weight   down   [r, in] | [r, in, kh, kw] | Tucker [r, in, 1, 1]
    <prefix><path>.lora_B.weight   up     [out, r] | [out, r, 1, 1]
    <prefix><path>.lora_mid.weight Tucker core [r, r, kh, kw]
    <prefix><path>.<factor>.weight the factors of other kinds, by their own names
    <prefix><path>.<param>         modules trained in full (modules_to_save), e.g. head.weight
<prefix> is "unet." / "text_encoder." for pipeline components, empty for a plain module. An adapter on
q/v slices of a fused qkv is written as the equivalent plain LoRA of rank k*r (B block-diagonal, zeros
elsewhere), so any PEFT-layout reader applies it exactly.

Metadata: format=pt; vislora.config (AdapterConfig JSON); vislora.modules (path -> kind, rank, alpha,
rslora, slices); lora_adapter_metadata (LoraConfig fields for the PEFT-spellable modules, so diffusers'
load_lora_weights gets the scale right); plus what the caller adds. Reading is driven by the module table:
each listed module's kind says which factor tensors it has; every other tensor is a full tensor.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..config import AdapterConfig
from ..errors import AdapterFormatError
from ..functional import KINDS
from ..functional.rows import sliced_up
from ..version import __version__
from .adapter import AdapterFile, ModuleWeights
from .peft_diffusers import FILE_FACTOR, METADATA_KEY, component, lora_adapter_metadata

FORMAT = "vislora"
MODULES_KEY = "vislora.modules"
CONFIG_KEY = "vislora.config"
VERSION_KEY = "vislora.version"
RESERVED = (MODULES_KEY, CONFIG_KEY, VERSION_KEY, "format", METADATA_KEY)
_FACTOR_SUFFIXES = tuple(f".{name}.weight" for name in FILE_FACTOR.values())


def factor_key(module: str, factor: str) -> str:
    return f"{module}.{FILE_FACTOR.get(factor, factor)}.weight"


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return MODULES_KEY in metadata


def _module(module: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> ModuleWeights:
    kind = entry["kind"]
    if kind not in KINDS:
        raise AdapterFormatError(f"module {module!r} is a {kind!r} adapter, which this vislora does not know "
                                 f"(it knows {sorted(KINDS)}); upgrade vislora", path=path, category="unsupported-format")
    keys = {f: factor_key(module, f) for f in KINDS[kind].FACTORS}
    missing = [k for k in keys.values() if k not in tensors]
    if missing:
        raise AdapterFormatError(f"module {module!r} is listed in the metadata but has no {missing}", path=path,
                                 category="incomplete")
    w = ModuleWeights(kind, {f: tensors[k] for f, k in keys.items()}, int(entry["rank"]), float(entry["alpha"]),
                      bool(entry.get("rslora", False)))
    if "slices" in entry:
        w.slices = tuple(tuple(s) for s in entry["slices"])
        w.out_features = w.factors["up"].shape[0]
        w.factors["up"], stray = sliced_up(w.factors["up"], w.slices)
        if stray:
            raise AdapterFormatError(f"{keys['up']}: entries outside the q/k/v slice blocks are non-zero", path=path,
                                     category="bad-slices")
    expected_down = w.rank * (len(w.slices) if w.slices else 1)
    if "down" in w.factors and w.factors["down"].shape[0] != expected_down:
        raise AdapterFormatError(f"{module}: {keys['down']} has {w.factors['down'].shape[0]} rows, metadata says "
                                 f"rank {w.rank}", path=path, category="shape-mismatch")
    return w


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, **options: Any) -> AdapterFile:
    try:
        table = json.loads(metadata[MODULES_KEY])
        config = AdapterConfig.from_dict(json.loads(metadata[CONFIG_KEY])) if CONFIG_KEY in metadata else None
        modules = {m: _module(m, entry, tensors, path) for m, entry in table.items()}
    except (ValueError, TypeError, KeyError) as e:
        raise AdapterFormatError(f"vislora metadata is malformed: {e}", path=path, category="bad-metadata") from None
    used = {factor_key(m, f) for m, w in modules.items() for f in w.factors}
    stray = [k for k in tensors if k not in used and k.endswith(_FACTOR_SUFFIXES)]
    if stray:
        raise AdapterFormatError(f"{stray[0]!r} is an adapter tensor with no entry in {MODULES_KEY}", path=path,
                                 category="bad-metadata")
    extra = {k: v for k, v in tensors.items() if k not in used}
    return AdapterFile(path, FORMAT, modules, extra, config, metadata)


def module_table(modules: dict[str, ModuleWeights]) -> str:
    table = {}
    for path, w in modules.items():
        entry: dict[str, Any] = {"kind": w.kind, "rank": w.rank, "alpha": w.alpha}
        if w.rslora:
            entry["rslora"] = True
        if w.slices is not None:
            entry["slices"] = [list(s) for s in w.slices]
        table[path] = entry
    return json.dumps(table, sort_keys=True, separators=(",", ":"))


def write(adapter: AdapterFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Factor tensors (sliced LoRA as plain LoRA), full tensors, the module table and the config."""
    tensors: dict[str, torch.Tensor] = {}
    peft_entries: dict[str, tuple[str, int, float]] = {}
    for path, w in adapter.modules.items():
        factors, rank = w.plain()
        tensors.update({factor_key(path, f): t for f, t in factors.items()})
        if set(factors) <= set(FILE_FACTOR):  # diffusers can read this module: tell it the scale
            peft_entries[path] = (component(path), rank, w.scale * rank)
    tensors.update(adapter.extra)
    clash = [k for k in adapter.metadata if k in RESERVED]
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved")
    meta = dict(adapter.metadata)
    meta.update({"format": "pt", VERSION_KEY: __version__, MODULES_KEY: module_table(adapter.modules),
                 METADATA_KEY: lora_adapter_metadata(peft_entries)})
    if adapter.config is not None:
        meta[CONFIG_KEY] = adapter.config.to_json()
    return tensors, meta

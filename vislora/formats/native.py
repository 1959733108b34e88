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
import re
from typing import Any

import torch

from ..config import AdapterConfig
from ..errors import AdapterFormatError
from ..functional import KINDS, complete
from ..functional.rows import sliced_up
from ..version import __version__
from .adapter import AdapterFile, ModuleWeights
from .checks import finite_alpha, json_object
from .peft_diffusers import FILE_FACTOR, METADATA_KEY, component, lora_adapter_metadata

FORMAT = "vislora"
MODULES_KEY = "vislora.modules"
CONFIG_KEY = "vislora.config"
VERSION_KEY = "vislora.version"
RESERVED = (MODULES_KEY, CONFIG_KEY, VERSION_KEY, "format", METADATA_KEY)
_FACTOR_SUFFIXES = tuple(f".{name}.weight" for name in FILE_FACTOR.values())


def factor_key(module: str, factor: str) -> str:
    return f"{module}.{FILE_FACTOR.get(factor, factor)}.weight"


def magnitude_key(module: str) -> str:
    """DoRA magnitude, in LyCORIS's shape ([out, 1, ...] or [1, in, ...]) as LyCORIS names it."""
    return f"{module}.dora_scale"


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return MODULES_KEY in metadata


def _module(module: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> ModuleWeights:
    kind = entry["kind"]
    if kind not in KINDS:
        raise AdapterFormatError(f"module {module!r} is a {kind!r} adapter, which this vislora does not know "
                                 f"(it knows {sorted(KINDS)}); upgrade vislora", path=path, category="unsupported-format")
    keys = {f: factor_key(module, f) for f in KINDS[kind].FACTORS if factor_key(module, f) in tensors}
    if not complete(KINDS[kind], set(keys)):
        missing = [factor_key(module, f) for f in KINDS[kind].FACTORS if f not in keys]
        raise AdapterFormatError(f"module {module!r} is listed in the metadata but has only {sorted(keys)} of its "
                                 f"factors; it lacks some of {missing}", path=path, category="incomplete")
    rank = entry["rank"]
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"module {module!r}: rank {rank!r} is not a whole number")
    w = ModuleWeights(kind, {f: tensors[k] for f, k in keys.items()}, rank,
                      finite_alpha(entry["alpha"], f"{MODULES_KEY} {module!r}", path), bool(entry.get("rslora", False)))
    if entry.get("dora"):
        if magnitude_key(module) not in tensors:
            raise AdapterFormatError(f"module {module!r} is DoRA in the metadata but has no {magnitude_key(module)}",
                                     path=path, category="incomplete")
        w.magnitude = tensors[magnitude_key(module)]
    if "slices" in entry:
        w.slices = _slices(module, entry["slices"], w.factors["up"])
        w.out_features = w.factors["up"].shape[0]
        up = w.factors["up"]
        w.factors["up"], stray = sliced_up(up, w.slices) if not up.is_meta else (_meta_sliced_up(up, w.slices), False)
        if stray:
            raise AdapterFormatError(f"{keys['up']}: entries outside the q/k/v slice blocks are non-zero", path=path,
                                     category="bad-slices")
    expected_down = w.rank * (len(w.slices) if w.slices else 1)
    if "down" in w.factors and w.factors["down"].shape[0] != expected_down:
        raise AdapterFormatError(f"{module}: {keys['down']} has {w.factors['down'].shape[0]} rows, metadata says "
                                 f"rank {w.rank}", path=path, category="shape-mismatch")
    return w


def _slices(module: str, raw: Any, up: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """The metadata's q/k/v row ranges, checked against up [out, k*r]: ordered, disjoint, inside the rows."""
    slices = tuple(tuple(s) for s in raw)
    end = 0
    for s in slices:
        if len(s) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in s) or not end <= s[0] < s[1]:
            raise ValueError(f"module {module!r}: slices {raw!r} are not ordered, disjoint [start, stop) row ranges")
        end = s[1]
    if not slices or end > up.shape[0] or up.dim() != 2 or up.shape[1] % len(slices):
        raise ValueError(f"module {module!r}: slices {raw!r} do not fit its up factor {list(up.shape)}")
    return slices


def _meta_sliced_up(fused: torch.Tensor, slices: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """sliced_up's shape for a header-only read: the slices' rows stacked, one slice's rank wide."""
    return torch.empty(sum(stop - start for start, stop in slices), fused.shape[1] // len(slices), dtype=fused.dtype,
                       device="meta")


def read(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, **options: Any) -> AdapterFile:
    table = json_object(metadata[MODULES_KEY], MODULES_KEY, path)
    raw_config = json_object(metadata[CONFIG_KEY], CONFIG_KEY, path) if CONFIG_KEY in metadata else None
    try:
        config = AdapterConfig.from_dict(raw_config) if raw_config is not None else None
        modules = {m: _module(m, entry, tensors, path) for m, entry in table.items()}
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, re.error) as e:
        raise AdapterFormatError(f"vislora metadata is malformed: {e}"[:500], path=path,
                                 category="bad-metadata") from None
    used = {factor_key(m, f) for m, w in modules.items() for f in w.factors}
    used |= {magnitude_key(m) for m, w in modules.items() if w.magnitude is not None}
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
        if w.magnitude is not None:
            entry["dora"] = True
        table[path] = entry
    return json.dumps(table, sort_keys=True, separators=(",", ":"))


def write(adapter: AdapterFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Factor tensors (sliced LoRA as plain LoRA), full tensors, the module table and the config."""
    tensors: dict[str, torch.Tensor] = {}
    peft_entries: dict[str, tuple[str, int, float]] = {}
    for path, w in adapter.modules.items():
        factors, rank = w.plain()
        tensors.update({factor_key(path, f): t for f, t in factors.items()})
        if w.magnitude is not None:
            tensors[magnitude_key(path)] = w.magnitude
        elif set(factors) <= set(FILE_FACTOR):  # diffusers can read this module: tell it the scale
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

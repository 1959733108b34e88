"""vislora's own files: the diffusers/PEFT key layout plus a per-module table in the metadata.

Tensors (one adapter per file, no adapter name in the keys):
    <prefix><path>.lora_A.weight   down   [r, in] | [r, in, kh, kw] | Tucker [r, in, 1, 1]
    <prefix><path>.lora_B.weight   up     [out, r] | [out, r, 1, 1]
    <prefix><path>.lora_mid.weight Tucker core [r, r, kh, kw]
    <prefix><path>.<param>         modules trained in full (modules_to_save), e.g. head.weight
<prefix> is "unet." / "text_encoder." for pipeline components, empty for a plain module. An adapter on
q/v slices of a fused qkv is written as the equivalent plain LoRA of rank k*r (B block-diagonal, zeros
elsewhere), so any PEFT-layout reader applies it exactly.

Metadata: format=pt; vislora.config (AdapterConfig JSON); vislora.modules (path -> kind, rank, alpha,
rslora, slices); lora_adapter_metadata (LoraConfig fields, so diffusers' load_lora_weights gets the
scale right); plus what the caller adds.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..config import AdapterConfig
from ..errors import AdapterFormatError
from ..functional.lora import _blocks
from . import AdapterFile, ModuleWeights, peft_diffusers

FORMAT = "vislora"
MODULES_KEY = "vislora.modules"
CONFIG_KEY = "vislora.config"
VERSION_KEY = "vislora.version"
RESERVED = (MODULES_KEY, CONFIG_KEY, VERSION_KEY, "format", peft_diffusers.METADATA_KEY)

_FILE_FACTOR = {"down": "lora_A", "up": "lora_B", "mid": "lora_mid"}


def _fused_up(up: torch.Tensor, out_features: int, slices: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Slice-wise up [rows, r] -> block-diagonal B [out, k*r] of the equivalent plain LoRA."""
    rank = up.shape[1]
    fused = up.new_zeros(out_features, len(slices) * rank)
    for rows, up_rows, down_rows in _blocks(slices, rank):
        fused[rows, down_rows] = up[up_rows]
    return fused


def _sliced_up(fused: torch.Tensor, slices: tuple[tuple[int, int], ...], key: str, path: str) -> torch.Tensor:
    """Inverse of _fused_up; refuses a B whose off-block entries are not exactly zero (not ours to drop)."""
    rank = fused.shape[1] // len(slices)
    parts, mask = [], torch.ones_like(fused, dtype=torch.bool)
    for rows, _, down_rows in _blocks(slices, rank):
        parts.append(fused[rows, down_rows])
        mask[rows, down_rows] = False
    if fused[mask].any():
        raise AdapterFormatError(f"{key}: entries outside the q/k/v slice blocks are non-zero", path=path,
                                 category="bad-slices")
    return torch.cat(parts)


def write_entries(module: str, weights: ModuleWeights, out_features: int) -> dict[str, torch.Tensor]:
    """File tensors for one module."""
    factors = dict(weights.factors)
    if weights.slices is not None:
        factors["up"] = _fused_up(factors["up"], out_features, weights.slices)
    return {f"{module}.{_FILE_FACTOR[n]}.weight": t for n, t in factors.items()}


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


def detect(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return MODULES_KEY in metadata


def parse(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> AdapterFile:
    try:
        table = json.loads(metadata[MODULES_KEY])
        config = AdapterConfig.from_dict(json.loads(metadata[CONFIG_KEY])) if CONFIG_KEY in metadata else None
    except (ValueError, TypeError, KeyError) as e:
        raise AdapterFormatError(f"vislora metadata is malformed: {e}", path=path, category="bad-metadata") from None
    modules, leftovers = peft_diffusers.parse(tensors, {}, path)
    for module, w in modules.items():
        entry = table.get(module)
        if entry is None:
            raise AdapterFormatError(f"module {module!r} has tensors but no entry in {MODULES_KEY}", path=path,
                                     category="bad-metadata")
        w.kind, w.alpha, w.rslora = entry["kind"], float(entry["alpha"]), bool(entry.get("rslora", False))
        if "slices" in entry:
            w.slices = tuple(tuple(s) for s in entry["slices"])
            w.factors["up"] = _sliced_up(w.factors["up"], w.slices, f"{module}.lora_B.weight", path)
        w.rank = int(entry["rank"])
        expected_down = w.rank * (len(w.slices) if w.slices else 1)
        if w.factors["down"].shape[0] != expected_down:
            raise AdapterFormatError(f"{module}: lora_A has {w.factors['down'].shape[0]} rows, metadata says rank "
                                     f"{w.rank}", path=path, category="shape-mismatch")
    missing = sorted(set(table) - set(modules))
    if missing:
        raise AdapterFormatError(f"{len(missing)} modules listed in the metadata have no tensors, e.g. {missing[:3]}",
                                 path=path, category="incomplete")
    extra = {k: tensors[k] for k in leftovers}
    return AdapterFile(path, FORMAT, modules, extra, config, metadata)

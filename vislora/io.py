"""save_adapter / load_adapter: one adapter per safetensors file, checked in full before the model changes.

Loading runs every check first (container, dtypes, finite values, module names, shapes, extra tensors),
and only then creates the adapter, so a bad file leaves the model exactly as it was.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .version import __version__
from .components import ADAPTABLE, components, is_pipeline, prefixed
from .config import AdapterConfig
from .errors import AdapterCompatError, AdapterFormatError, AdapterStateError
from .formats import AdapterFile, ModuleWeights, container, native, peft_diffusers
from .functional import RowLayout
from .inject import _check_name, _set_module, adapter_names, configs, resolve_saved
from .layers import AdapterLayer, AdapterSlot
from .targets import adaptable_modules

FACTOR_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EXTRA_DTYPES = FACTOR_DTYPES + (torch.int64,)  # int64: BatchNorm's num_batches_tracked
_ARCH_BY_CROSS_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


class AdapterWarning(UserWarning):
    """Something in an adapter file was not applied (unmatched keys)."""


@dataclass
class LoadReport:
    """What `load_adapter` applied: matched module paths, and the file's modules that matched nothing."""

    name: str
    path: str
    format: str
    matched: list[str]
    unmatched: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"adapter {self.name!r} from {self.path} ({self.format}): {len(self.matched)} modules"
        if self.extra:
            text += f", {len(self.extra)} full tensors"
        if self.unmatched:
            text += f"; {len(self.unmatched)} unmatched, e.g. {self.unmatched[:3]}"
        return text


# -- save ---------------------------------------------------------------------------------------------------
def _weights_of(slot: AdapterSlot, dtype: torch.dtype | None) -> ModuleWeights:
    factors = {n: p.detach().to("cpu", dtype or p.dtype) for n, p in slot.params.items()}
    layout = slot.layout
    slices = layout.slices if isinstance(layout, RowLayout) and not layout.is_full else None
    return ModuleWeights(slot.kind, factors, slot.rank, slot.alpha, slot.rslora, slices)


def save_adapter(
    model: Any,
    path: str | os.PathLike,
    name: str = "default",
    *,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write adapter `name` (and its modules_to_save) to a safetensors file, atomically.

    `metadata` adds string entries (e.g. class names); `dtype` casts the factors (default: as trained).
    """
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, ModuleWeights] = {}
    peft_entries: dict[str, tuple[str, int, float]] = {}
    for comp, root in components(model).items():
        for local, layer in root.named_modules():
            if not isinstance(layer, AdapterLayer) or name not in layer.adapters:
                continue
            full = prefixed(comp, local)
            w = _weights_of(layer.adapters[name], dtype)
            modules[full] = w
            out_features = layer.base_layer.weight.shape[0]
            entries = native.write_entries(full, w, out_features)
            tensors.update(entries)
            file_rank = entries[f"{full}.lora_A.weight"].shape[0]
            peft_entries[full] = (comp, file_rank, w.scale * file_rank)
    if not modules:
        raise AdapterStateError(f"no adapter named {name!r} on this model; it has {adapter_names(model)}")
    config = configs(model).get(name)
    for comp, local in resolve_saved(model, config.modules_to_save if config else ()):
        module = components(model)[comp].get_submodule(local)
        for key, value in module.state_dict().items():
            tensors[f"{prefixed(comp, local)}.{key}"] = value.detach().to("cpu")
    meta = dict(metadata or {})
    clash = [k for k in meta if k in native.RESERVED]
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved")
    meta.update({
        "format": "pt",
        native.VERSION_KEY: __version__,
        native.MODULES_KEY: native.module_table(modules),
        peft_diffusers.METADATA_KEY: peft_diffusers.lora_adapter_metadata(peft_entries),
    })
    if config is not None:
        meta[native.CONFIG_KEY] = config.to_json()
    return container.write(path, tensors, meta)


# -- read ---------------------------------------------------------------------------------------------------
def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Parse an adapter file (or a PEFT adapter folder) without touching any model."""
    path = Path(path)
    peft_config = None
    if path.is_dir():
        config_file = path / "adapter_config.json"
        path = path / "adapter_model.safetensors"
        if config_file.is_file():
            try:
                peft_config = json.loads(config_file.read_text())
            except ValueError as e:
                raise AdapterFormatError(f"adapter_config.json is not JSON: {e}", path=config_file,
                                         category="bad-metadata") from None
    tensors, metadata = container.read(path)
    _check_values(tensors, path)
    if native.detect(tensors, metadata):
        return native.parse(tensors, metadata, str(path))
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_")) for k in tensors):
        raise AdapterFormatError("kohya/LyCORIS-named files are not supported yet", path=path,
                                 category="unsupported-format")
    if peft_diffusers.detect(tensors, metadata):
        modules, leftovers = peft_diffusers.parse(tensors, metadata, str(path), peft_config)
        if leftovers:
            raise AdapterFormatError(f"{len(leftovers)} keys are not LoRA tensors, e.g. {leftovers[:5]}", path=path,
                                     category="unknown-keys")
        return AdapterFile(str(path), peft_diffusers.FORMAT, modules, {}, None, metadata)
    raise AdapterFormatError(f"no LoRA tensors found; keys look like {list(tensors)[:5]}", path=path,
                             category="not-an-adapter")


def _check_values(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for key, t in tensors.items():
        if t.dtype not in EXTRA_DTYPES or (t.dtype == torch.int64 and not key.endswith("num_batches_tracked")):
            if not (key.endswith(".alpha") and t.numel() == 1 and not t.dtype.is_complex):
                raise AdapterFormatError(f"{key!r} has dtype {t.dtype}; adapters store float32/float16/bfloat16",
                                         path=path, category="bad-dtype")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AdapterFormatError(f"{key!r} contains NaN or inf", path=path, category="non-finite")


# -- match --------------------------------------------------------------------------------------------------
def _locate(model: Any, full: str, tables: dict[str, dict[str, nn.Module]]) -> tuple[str, str] | None:
    """(component, local path) of a file's module path in this model, or None."""
    if is_pipeline(model):
        comp, _, local = full.partition(".")
        return (comp, local) if local in tables.get(comp, {}) else None
    if full in tables[""]:
        return "", full
    head, _, rest = full.partition(".")
    if head in ADAPTABLE and rest in tables[""]:  # a pipeline file loaded into the bare component
        return "", rest
    return None


def _expected(kind: str, base: nn.Module, w: ModuleWeights) -> dict[str, tuple[int, ...]] | None:
    weight_shape = tuple(base.weight.shape)
    r = w.rank
    if kind == "lora" and isinstance(base, nn.Linear):
        out, inp = weight_shape
        k = len(w.slices) if w.slices else 1
        rows = sum(b - a for a, b in w.slices) if w.slices else out
        return {"down": (k * r, inp), "up": (rows, r)}
    if kind in ("locon", "tucker") and isinstance(base, nn.Conv2d):
        out, inp, kh, kw = weight_shape
        if kind == "locon":
            return {"down": (r, inp, kh, kw), "up": (out, r, 1, 1)}
        return {"down": (r, inp, 1, 1), "mid": (r, r, kh, kw), "up": (out, r, 1, 1)}
    return None


def _arch_hint(mismatches: list[tuple[str, str, tuple, tuple]]) -> str:
    for key, factor, want, got in mismatches:
        if factor == "down" and re.search(r"(^|\.)attn2\.to_[kv]$", key) and len(got) == 2:
            source = _ARCH_BY_CROSS_WIDTH.get(got[1], f"cross-attention width {got[1]}")
            target = _ARCH_BY_CROSS_WIDTH.get(want[1], f"cross-attention width {want[1]}")
            return f" The file looks made for {source}; this model is {target}."
    return ""


def load_adapter(
    model: Any,
    path: str | os.PathLike,
    name: str = "default",
    *,
    strength: float = 1.0,
    strict: bool = False,
    trainable: bool = False,
) -> LoadReport:
    """Load an adapter file onto the model as adapter `name`.

    Errors (AdapterFormatError / AdapterCompatError) leave the model untouched. Modules in the file that
    match nothing: an error if none match, a warning with the count otherwise, an error with strict=True.
    trainable=True makes the loaded factors trainable and freezes the rest (to continue training).
    """
    _check_name(name)
    if name in adapter_names(model):
        raise AdapterStateError(f"adapter {name!r} is already on this model; remove it first or pick another name")
    adapter = read_adapter(path)
    parts = components(model)
    tables = {comp: adaptable_modules(root) for comp, root in parts.items()}

    plan, unmatched, mismatches = [], [], []
    for full, w in adapter.modules.items():
        where = _locate(model, full, tables)
        if where is None:
            unmatched.append(full)
            continue
        module = tables[where[0]][where[1]]
        base = module.base_layer if isinstance(module, AdapterLayer) else module
        want = _expected(w.kind, base, w)
        if want is None:
            mismatches.append((full, w.kind, (type(base).__name__,), (w.kind,)))
            continue
        for factor, shape in want.items():
            got = tuple(w.factors[factor].shape) if factor in w.factors else ()
            if got != shape:
                mismatches.append((full, factor, shape, got))
        if w.slices and any(b > base.weight.shape[0] for _, b in w.slices):
            mismatches.append((full, "slices", (base.weight.shape[0],), tuple(w.slices)))
        plan.append((where, module, w))
    if mismatches:
        lines = [f"  {k} [{f}]: model needs {want}, file has {got}" for k, f, want, got in mismatches[:10]]
        more = f"\n  ... and {len(mismatches) - 10} more" if len(mismatches) > 10 else ""
        raise AdapterCompatError(f"{len(mismatches)} tensors do not fit this model:\n" + "\n".join(lines) + more
                                 + _arch_hint(mismatches), path=path, category="shape-mismatch")
    if not plan:
        raise AdapterCompatError(f"none of the file's {len(unmatched)} modules exist in this model, e.g. "
                                 f"{unmatched[:3]}; model modules look like {list(next(iter(tables.values())))[:3]}",
                                 path=path, category="no-match")
    if unmatched and strict:
        raise AdapterCompatError(f"{len(unmatched)} modules match nothing (strict): {unmatched[:20]}", path=path,
                                 category="unmatched")
    extra = _check_extra(model, adapter, path)
    if unmatched:
        warnings.warn(f"{path}: {len(unmatched)} of {len(adapter.modules)} adapter modules match nothing in this "
                      f"model and were skipped, e.g. {unmatched[:20]}", AdapterWarning, stacklevel=2)

    # Every check passed: now change the model.
    for (comp, local), module, w in plan:
        layer = module if isinstance(module, AdapterLayer) else AdapterLayer(module)
        base = layer.base_layer
        layout = RowLayout(base.out_features, w.slices) if w.slices else layer.default_layout()
        slot = AdapterSlot(w.kind, base.weight, layout, w.rank, w.alpha, rslora=w.rslora)
        with torch.no_grad():
            for factor, value in w.factors.items():
                getattr(slot, factor).copy_(value)
        slot.strength = float(strength)
        if layer is not module:
            _set_module(parts[comp], local, layer)
        layer.add(name, slot)
    with torch.no_grad():
        for tensor, value in extra:
            tensor.copy_(value)
    _set_trainable(model, name, trainable, extra)
    matched = [prefixed(c, p) for (c, p), _, _ in plan]
    configs(model)[name] = adapter.config or AdapterConfig(sorted(matched))
    return LoadReport(name, str(path), adapter.format, matched, unmatched, [k for k in adapter.extra], adapter.metadata)


def _check_extra(model: Any, adapter: AdapterFile, path: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Full tensors (modules_to_save) must name existing parameters/buffers of the same shape."""
    states = {comp: dict(root.named_parameters()) | dict(root.named_buffers())
              for comp, root in components(model).items()}
    found, problems = [], []
    for key, value in adapter.extra.items():
        comp, _, local = key.partition(".") if is_pipeline(model) else ("", "", key)
        target = states.get(comp, {}).get(local)
        if target is None:
            problems.append(f"{key}: no such parameter or buffer in the model")
        elif target.shape != value.shape:
            problems.append(f"{key}: model has shape {tuple(target.shape)}, file has {tuple(value.shape)}")
        else:
            found.append((target, value))
    if problems:
        raise AdapterCompatError("the file's full tensors (modules_to_save) do not fit this model - a different "
                                 "number of classes? " + "; ".join(problems[:10]), path=path, category="extra-mismatch")
    return found


def _set_trainable(model: Any, name: str, trainable: bool, extra: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for root in components(model).values():
        if trainable:  # continue training: freeze everything but adapter factors already trainable
            keep = {id(p) for m in root.modules() if isinstance(m, AdapterSlot) for p in m.parameters() if p.requires_grad}
            for p in root.parameters():
                if id(p) not in keep:
                    p.requires_grad_(False)
        for module in root.modules():
            if isinstance(module, AdapterLayer) and name in module.adapters:
                module.adapters[name].requires_grad_(trainable)
    if trainable:
        for tensor, _ in extra:
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(True)

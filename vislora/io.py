"""save_adapter / load_adapter / read_adapter: one adapter per safetensors file.

Reading and writing files is `vislora.formats` (one module per format, all to one `AdapterFile`); putting a
parsed file onto a model is `vislora.apply` (every check first, so a bad file leaves the model as it was).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import formats
from .apply import AdapterWarning, apply
from .components import components, prefixed
from .errors import AdapterStateError
from .formats import AdapterFile, ModuleWeights, arch
from .functional import RowLayout
from .inject import adapter_layers, adapter_names, check_new_name, configs, resolve_saved
from .slot import AdapterSlot
from .strengths import check_strength
from .targets.families import FAMILIES, MODELSPEC_KEY

__all__ = ["AdapterWarning", "LoadReport", "load_adapter", "read_adapter", "save_adapter", "adapter_file"]


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


def _weights_of(slot: AdapterSlot, out_features: int, dtype: torch.dtype | None) -> ModuleWeights:
    factors = {n: p.detach().to("cpu", dtype or p.dtype) for n, p in slot.params.items()}
    layout = slot.layout
    slices = layout.slices if isinstance(layout, RowLayout) and not layout.is_full else None
    w = ModuleWeights(slot.kind, factors, slot.rank, slot.alpha, slot.rslora, slices, out_features)
    if slot.dora_axis is not None:
        w.magnitude = slot.magnitude.detach().to("cpu", dtype or slot.magnitude.dtype)
    return w


def adapter_file(model: Any, name: str = "default", *, metadata: dict[str, str] | None = None,
                 dtype: torch.dtype | None = None) -> AdapterFile:
    """Adapter `name` of the model (factors on CPU, modules_to_save as full tensors) as an AdapterFile."""
    modules = {path: _weights_of(layer.adapters[name], layer.base_layer.weight.shape[0], dtype)
               for path, layer in adapter_layers(model) if name in layer.adapters}
    if not modules:
        raise AdapterStateError(f"no adapter named {name!r} on this model; it has {adapter_names(model)}")
    config = configs(model).get(name)
    extra = {}
    for comp, local in resolve_saved(model, config.modules_to_save if config else ()):
        module = components(model)[comp].get_submodule(local)
        extra.update({f"{prefixed(comp, local)}.{k}": v.detach().to("cpu") for k, v in module.state_dict().items()})
    metadata = dict(metadata or {})
    family = arch.of_model(model).family
    spec = next((f.modelspec for f in FAMILIES if f.name == family and f.modelspec), None)
    if spec:  # which transformer family, for files whose names alone do not say (q/v of Flux.1 or SD3)
        metadata.setdefault(MODELSPEC_KEY, f"{spec}/lora")
    return AdapterFile("", formats.native.FORMAT, modules, extra, config, metadata)


def save_adapter(
    model: Any,
    path: str | os.PathLike,
    name: str = "default",
    *,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
    format: str = formats.DEFAULT,
) -> Path:
    """Write adapter `name` (and its modules_to_save) to a safetensors file, atomically.

    `metadata` adds string entries (e.g. class names); `dtype` casts the factors (default: as trained).
    `format`: "vislora" (own: every kind, loads in diffusers for LoRA/LoCon), "kohya" / "lycoris" (the
    layout ComfyUI, A1111, kohya and diffusers read; LoHa/LoKr/Tucker/DoRA the LyCORIS way), "diffusers"
    (PEFT keys with component prefixes), "peft" (an adapter folder at `path`).
    """
    return formats.write(path, adapter_file(model, name, metadata=metadata, dtype=dtype), format)


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Parse an adapter file (or a PEFT adapter folder) without touching any model."""
    return formats.read(path)


def load_adapter(
    model: Any,
    path: str | os.PathLike,
    name: str = "default",
    *,
    strength: float = 1.0,
    strict: bool = True,
    trainable: bool = False,
) -> LoadReport:
    """Load an adapter file onto the model as adapter `name`.

    Errors (AdapterFormatError / AdapterCompatError) leave the model untouched. Modules in the file that
    match nothing: an error (strict, the default) that lists them; with strict=False the rest loads, with a
    warning that counts loaded and skipped modules per component. A file made for another base model (an SDXL
    adapter on SD1.5) is refused before anything changes, naming both.
    trainable=True makes the loaded factors trainable and freezes the rest (to continue training).
    """
    check_new_name(model, name)
    strength = check_strength(strength, f"load_adapter({str(path)!r}) strength")
    adapter = read_adapter(path)
    matched, unmatched = apply(model, adapter, name, strength=strength, strict=strict, trainable=trainable)
    return LoadReport(name, str(path), adapter.format, matched, unmatched, list(adapter.extra), adapter.metadata)

"""Adapter files: one module per format, each reading to and writing from the same in-memory `AdapterFile`.

A format module `formats/<name>.py` has

    FORMAT                                        its name (what LoadReport.format says)
    detect(tensors, metadata) -> bool             whether a file is in this format
    read(tensors, metadata, path, **options)      -> AdapterFile: per-module factors in vislora's own shapes
                                                     (see vislora.functional) and each module's rank and alpha
    write(adapter: AdapterFile)                   -> (tensors, metadata) to store in a safetensors container
    folder(path) -> (file, options) | None        optional: the file inside an adapter folder, and read options
    resolve(file_module_names, model)             optional: {file name: (component, path)} for formats whose
                                                     names only resolve against a live model (kohya)

`FORMATS` lists them in detection order. Nothing here touches a model: vislora.apply matches an
AdapterFile against one. The container (the safetensors library under our checks) is `container`; what
every read refuses beyond it (bounded JSON, alphas, ranks, factor shapes) is `checks`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch

from ..errors import AdapterFormatError
from . import checks, container, kohya, native, peft_diffusers, peft_folder
from .adapter import AdapterFile, ModuleWeights

FORMATS: dict[str, ModuleType] = {m.FORMAT: m for m in (native, kohya, peft_diffusers)}

FACTOR_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EXTRA_DTYPES = FACTOR_DTYPES + (torch.int64,)  # int64: BatchNorm's num_batches_tracked


def read(path: str | os.PathLike, *, values: bool = True) -> AdapterFile:
    """Parse an adapter file (or an adapter folder a format knows, or a set of PEFT folders, one per pipeline
    component, read as one adapter) without touching any model. The file is parsed from its header first
    (meta tensors), so a bad header, alpha, rank or factor shape (formats.checks) is refused before any data
    is mapped; then the data is mapped and its values checked (finite, allowed dtypes).

    values=False reads headers only (what `inspect` and the studio's catalogue need): factors are meta
    tensors with their shapes and dtypes, so a file of any size is described in milliseconds, and tensor
    values (NaN, inf) are checked only when a full read loads them."""
    path, options = Path(path), {}
    parts = peft_folder.components_in(path) if path.is_dir() else None
    if parts:
        return peft_folder.combine({comp: read(sub, values=values) for comp, sub in parts.items()}, path)
    if path.is_dir():
        for fmt in FORMATS.values():
            found = fmt.folder(path) if hasattr(fmt, "folder") else None
            if found is not None:
                path, options = found
                break
    adapter = _parse(*container.read(path, values=False), path, options)  # the header's facts, checked
    if not values:
        return adapter
    tensors, metadata = container.read(path)  # now map the data
    adapter = _parse(tensors, metadata, path, options)
    check_values(tensors, path)  # last: the only check that reads every byte
    return adapter


def parse(data: bytes, name: str = "<bytes>", *, values: bool = True) -> AdapterFile:
    """`read` for one file's bytes in memory (`name` stands for its path in errors): the same checks in the
    same order, without a file."""
    adapter = _parse(*container.parse(data, name, values=False), Path(name), {})
    if not values:
        return adapter
    tensors, metadata = container.parse(data, name)
    adapter = _parse(tensors, metadata, Path(name), {})
    check_values(tensors, Path(name))
    return adapter


def _parse(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path, options: dict) -> AdapterFile:
    for fmt in FORMATS.values():
        if fmt.detect(tensors, metadata):
            return checks.check_adapter(fmt.read(tensors, metadata, str(path), **options))
    raise AdapterFormatError(f"no LoRA tensors found; keys look like {list(tensors)[:5]}", path=path,
                             category="not-an-adapter")


# What users call the layouts they write: kohya and LyCORIS files are one layout, diffusers' is PEFT's key
# layout, and "peft" is a PEFT adapter folder (formats/peft_folder.py).
ALIASES = {"lycoris": kohya.FORMAT, "diffusers": peft_diffusers.FORMAT}
TARGETS = (*FORMATS, *ALIASES, "peft")


def write(path: str | os.PathLike, adapter: AdapterFile, format: str = native.FORMAT) -> Path:
    """Write `adapter` in `format` (default vislora's own; any of TARGETS), atomically."""
    if format == "peft":
        return peft_folder.write_folder(path, adapter)
    if ALIASES.get(format, format) not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose from {sorted(TARGETS)}")
    tensors, metadata = FORMATS[ALIASES.get(format, format)].write(adapter)
    return container.write(path, tensors, metadata)


def check_values(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Adapter tensors are float32/float16/bfloat16 (scalar alphas and BatchNorm counters aside) and finite."""
    for key, t in tensors.items():
        if t.dtype not in EXTRA_DTYPES or (t.dtype == torch.int64 and not key.endswith("num_batches_tracked")):
            if not (key.endswith(".alpha") and t.numel() == 1 and not t.dtype.is_complex):
                raise AdapterFormatError(f"{key!r} has dtype {t.dtype}; adapters store float32/float16/bfloat16",
                                         path=path, category="bad-dtype")
        if t.is_floating_point() and not t.is_meta and not torch.isfinite(t).all():
            raise AdapterFormatError(f"{key!r} contains NaN or inf", path=path, category="non-finite")


__all__ = ["AdapterFile", "FORMATS", "ModuleWeights", "check_values", "checks", "container", "parse", "read",
           "write"]

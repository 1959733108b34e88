"""What every file tool shares: files normalised to module paths, deltas, writing, progress bars."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Iterable, TypeVar

import torch

from .. import checks, formats
from ..errors import AdapterCompatError
from ..formats import FORMATS, AdapterFile, ModuleWeights, kohya
from ..formats.arch import of_file
from ..targets.families import family_named
from ..functional import KINDS, RowLayout
from .skeleton import base_model

T = TypeVar("T")
BASES = {"sd15": "SD1.x", "sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux1": "Flux.1", "flux2": "Flux.2",
         "sd3": "SD3"}


# What resize, extract and merge factor to, checked before any file is read (vislora.checks rules).
TARGET_RULES = {"rank": checks.count(1), "energy": checks.number(0, 1, low_open=True, example="0.9")}


def check_target(rank: int | None, energy: float | None) -> None:
    """Exactly one of a rank >= 1 and an energy share in (0, 1]: what resize and extract factor to."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a whole number >= 1, got {rank!r}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")


def check_output(path: str | os.PathLike, to: str) -> None:
    """Refuse an output `path` that cannot receive a --to `to` adapter, before anything is read."""
    path = Path(path)
    if to == "peft" and path.exists() and not path.is_dir():
        raise checks.UsageError(f"{path} is a file; --to peft writes an adapter folder: give a folder path")
    if to != "peft" and path.is_dir():
        raise checks.UsageError(f"{path} is a folder; give a file path such as {path / 'adapter.safetensors'}")


def add_target_option(parser: Any, **options: Any) -> None:
    """--to, choosing among the formats' names (formats.TARGETS); default vislora's own unless required."""
    if not options.get("required"):
        options.setdefault("default", formats.DEFAULT)
    parser.add_argument("--to", choices=sorted(formats.TARGETS), **options)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on stderr when it is a terminal; the plain iterable otherwise."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="module", leave=False)


def normalise(adapter: AdapterFile, base: str | None = None, allow_partial: bool = False) -> AdapterFile:
    """The file with module paths (component-prefixed for SD pipelines) and factors in vislora's shapes.

    kohya/LyCORIS names resolve against a meta-device stand-in of the base (`base`, else the one the names
    or shapes point to, else the one its `modelspec.architecture` names, else SD1.x); names that resolve
    nowhere are an error unless allow_partial."""
    fmt = FORMATS.get(adapter.format)
    if not hasattr(fmt, "resolve"):
        return adapter
    named = family_named(adapter.metadata)
    arch = BASES.get(base, base) or of_file(adapter.modules).name or (named and named.name) or "SD1.x"
    model = base_model(arch)
    found = fmt.resolve(list(adapter.modules), model)
    missing = [n for n in adapter.modules if n not in found]
    if missing and not allow_partial:
        raise AdapterCompatError(f"{len(missing)} of {len(adapter.modules)} module names do not exist in {arch}, e.g. "
                                 f"{missing[:5]}; pass --base for another base, or --allow-partial to drop them",
                                 path=adapter.path, category="unmatched")
    modules = {}
    for name, (comp, path) in found.items():
        layer = model.components[comp].get_submodule(path)
        modules[f"{comp}.{path}"] = kohya.fit(adapter.modules[name], tuple(layer.weight.shape))
    return AdapterFile(adapter.path, adapter.format, modules, dict(adapter.extra), adapter.config,
                       dict(adapter.metadata))


def read(path: str | os.PathLike, base: str | None = None, allow_partial: bool = False) -> AdapterFile:
    return normalise(formats.read(path), base, allow_partial)


def layout(w: ModuleWeights) -> RowLayout | None:
    """The layout argument a kind's delta_weight needs without a model: the module's row slices, where it has
    some; None otherwise (every row; conv kinds build delta W from their factors' shapes)."""
    return RowLayout(w.out_features, w.slices) if w.slices else None


def delta(w: ModuleWeights) -> torch.Tensor:
    """scale * delta W in fp32, shaped like the base weight (DoRA modules refused: their effect depends on W)."""
    if getattr(w, "magnitude", None) is not None:
        raise AdapterCompatError("DoRA modules change the weight's norm, which needs the base weight; they cannot "
                                 "be merged, resized or re-factored without the model", category="dora")
    factors = {n: t.float() for n, t in w.factors.items()}
    return KINDS[w.kind].delta_weight(factors, layout(w)) * w.scale


def exact(w: ModuleWeights) -> bool:
    """Whether scale * delta W is up @ down as matrices (the kind's MATRIX_PRODUCT; DoRA aside): such modules
    concatenate along the rank with no approximation."""
    return getattr(KINDS[w.kind], "MATRIX_PRODUCT", False) and getattr(w, "magnitude", None) is None


def product(w: ModuleWeights) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None:
    """(up [out, k] with the scale folded in, down [k, n], the weight's shape) where scale * delta W is that
    product (LoRA, LoCon), else None."""
    if not exact(w):
        return None
    factors, rank = w.plain() if w.slices else (dict(w.factors), w.rank)
    up, down = factors["up"].float(), factors["down"].float()
    return up.reshape(up.shape[0], -1) * w.scale, down.reshape(down.shape[0], -1), (up.shape[0], *down.shape[1:])


def write(path: str | os.PathLike, adapter: AdapterFile, to: str) -> Path:
    """Write in a target format (a name in formats.TARGETS); what the layout cannot hold is a typed error. The
    metadata that described the source file's layout (its module table, PEFT scales, format tag) is left behind:
    the target format writes its own."""
    carried = {k: v for k, v in adapter.metadata.items() if k not in formats.native.RESERVED}
    adapter = dataclasses.replace(adapter, metadata=carried)
    try:
        return formats.write(path, adapter, to)
    except ValueError as e:
        raise AdapterCompatError(f"cannot write as {to}: {e}", path=path, category="unsupported-kind") from None

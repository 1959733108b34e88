"""Put a parsed adapter file (an `AdapterFile`) onto a model: match module names, check shapes, build slots.

Every check runs first (names, kinds, shapes from each kind's `shapes`, full tensors), and only then does the
model change, through inject's `place` and freezing, so a bad file leaves the model exactly as it was.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn

from .components import ADAPTABLE, components, is_pipeline, prefixed
from .formats import arch
from .config import AdapterConfig, kinds_for
from .errors import AdapterCompatError
from . import formats
from .formats import FORMATS, AdapterFile, ModuleWeights
from .functional import KINDS, dora
from .inject import Placement, freeze_all_but_adapters, place
from .targets import adaptable_modules

Resolver = Callable[[list[str], Any], dict[str, tuple[str, str]]]


class AdapterWarning(UserWarning):
    """Something in an adapter file was not applied (unmatched keys)."""


def resolve_by_prefix(names: list[str], model: Any) -> dict[str, tuple[str, str]]:
    """{file module name: (component, local path)} for the names that exist in the model. A pipeline's names
    start with their component ("unet."); a pipeline file also loads into the bare component."""
    tables = {comp: adaptable_modules(root) for comp, root in components(model).items()}
    found = {}
    for full in names:
        if is_pipeline(model):
            comp, _, local = full.partition(".")
            if local in tables.get(comp, {}):
                found[full] = (comp, local)
        elif full in tables[""]:
            found[full] = ("", full)
        else:
            head, _, rest = full.partition(".")
            if head in ADAPTABLE and rest in tables[""]:
                found[full] = ("", rest)
    return found


def _mismatches(full: str, w: ModuleWeights, layer: Any) -> list[tuple[str, str, tuple, tuple]]:
    """What does not fit: (module, factor, model needs, file has); the needed shapes are the kind's `shapes`
    (or its own `check`, for kinds whose shapes do not follow from the rank)."""
    base = layer.base_layer
    if not isinstance(base, KINDS[w.kind].BASES):
        return [(full, w.kind, (type(base).__name__,), (w.kind,))]
    if w.magnitude is not None and dora.axis_of(tuple(w.magnitude.shape), tuple(base.weight.shape)) is None:
        return [(full, "dora magnitude", dora.magnitude_shape(tuple(base.weight.shape), "out"),
                 tuple(w.magnitude.shape))]
    check = getattr(KINDS[w.kind], "check", None)
    if check is not None:
        return [(full, problem, (), ()) for problem in check(tuple(base.weight.shape), w.factors)]
    if w.slices and any(b > base.weight.shape[0] for _, b in w.slices):
        return [(full, "slices", (base.weight.shape[0],), tuple(w.slices))]
    want = KINDS[w.kind].shapes(tuple(base.weight.shape), w.rank, layer.layout_for(w.slices))
    got = {f: tuple(w.factors[f].shape) if f in w.factors else () for f in want}
    return [(full, f, shape, got[f]) for f, shape in want.items() if got[f] != shape]


def component_of(name: str) -> str:
    """The component a file or model module name belongs to: as a format's naming says (kohya's lora_unet,
    lora_te1, ...), a pipeline prefix (unet, text_encoder, ...), else "model"."""
    named = formats.component_of(name)
    if named is not None:
        return named
    head = name.partition(".")[0]
    return head if head in ADAPTABLE and "." in name else "model"


def per_component(names: list[str]) -> str:
    """"unet 12, text_encoder 3": counts by component_of."""
    return ", ".join(f"{c} {n}" for c, n in Counter(component_of(x) for x in names).most_common())


def _compat(message: str, path: Any, category: str) -> AdapterCompatError:
    return AdapterCompatError(message, path=path, category=category)


def plan(model: Any, adapter: AdapterFile, *, strict: bool = False) -> tuple[dict[str, Placement], list[str]]:
    """{file module name: its slot, filled with the file's factors} for the modules the model has, and the
    names that matched nothing. Raises AdapterCompatError (nothing changed) when something does not fit."""
    fmt = FORMATS.get(adapter.format)
    resolve: Resolver = getattr(fmt, "resolve", resolve_by_prefix)
    fit = getattr(fmt, "fit", lambda w, weight_shape: w)  # file shapes -> the layer's (kohya's flattened convs)
    refusal = arch.mismatch(arch.of_file(adapter.modules), arch.of_model(model))
    if refusal:
        raise _compat(f"{refusal}; nothing was loaded", adapter.path, "wrong-base")
    found = resolve(list(adapter.modules), model)
    parts = components(model)
    unmatched = [n for n in adapter.modules if n not in found]
    built: dict[str, Placement] = {}
    mismatches = []
    for full, (comp, local) in found.items():
        placement, layer = Placement.wrap(comp, local, parts[comp].get_submodule(local))
        w = fit(adapter.modules[full], tuple(layer.base_layer.weight.shape))
        problems = _mismatches(full, w, layer)
        mismatches += problems
        if not problems:
            placement.slot = layer.new_slot(w.kind, w.rank, w.alpha, slices=w.slices, rslora=w.rslora)
            placement.slot.set_factors(w.factors)
            if w.magnitude is not None:
                weight_shape = tuple(layer.base_layer.weight.shape)
                placement.slot.set_magnitude(w.magnitude, dora.axis_of(tuple(w.magnitude.shape), weight_shape))
            built[full] = placement
    if mismatches:
        lines = [f"  {k} [{f}]: model needs {want}, file has {got}" if want or got else f"  {k}: {f}"
                 for k, f, want, got in mismatches[:10]]
        more = f"\n  ... and {len(mismatches) - 10} more" if len(mismatches) > 10 else ""
        raise _compat(f"{len(mismatches)} tensors do not fit this model:\n" + "\n".join(lines) + more
                      + arch.shape_hint(mismatches), adapter.path, "shape-mismatch")
    if not built:
        some = list(adaptable_modules(next(iter(parts.values()))))[:3]
        raise _compat(f"none of the file's {len(unmatched)} modules exist in this model, e.g. {unmatched[:3]}; "
                      f"model modules look like {some}", adapter.path, "no-match")
    if unmatched and strict:
        files = sorted({adapter.source_of(n) for n in unmatched})  # per-component folders: the files concerned
        where = f" (in {', '.join(files)})" if files != [adapter.path] else ""
        raise _compat(f"{len(unmatched)} of {len(adapter.modules)} modules match nothing in this model "
                      f"({per_component(unmatched)}){where}: {unmatched[:20]}; pass strict=False (--allow-partial) "
                      "to load the rest", files[0] if len(files) == 1 else adapter.path, "unmatched")
    return built, unmatched


def full_tensors(model: Any, adapter: AdapterFile) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(model tensor, file tensor) for each full tensor (modules_to_save): same name, same shape, or an error."""
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
        raise _compat("the file's full tensors (modules_to_save) do not fit this model - a different number of "
                      "classes? " + "; ".join(problems[:10]), adapter.path, "extra-mismatch")
    return found


def config_of(adapter: AdapterFile, matched: dict[str, ModuleWeights]) -> AdapterConfig:
    """The file's own config, or one that records each matched module's real rank and alpha."""
    if adapter.config is not None:
        return adapter.config
    weights = list(matched.values())
    rank = Counter(w.rank for w in weights).most_common(1)[0][0]
    alpha = Counter(w.alpha for w in weights).most_common(1)[0][0]
    kinds = {w.kind for w in weights}
    conv = next((k for k in kinds_for(nn.Conv2d) if k in kinds), "locon")
    linear = next((k for k in kinds_for(nn.Linear) if k in kinds), "lora")
    targets = {path: {"rank": w.rank, "alpha": w.alpha} for path, w in sorted(matched.items())}
    return AdapterConfig(targets, rank=rank, alpha=alpha, rslora=all(w.rslora for w in weights), conv=conv,
                         linear=linear)


def apply(model: Any, adapter: AdapterFile, name: str, *, strength: float = 1.0, strict: bool = False,
          trainable: bool = False) -> tuple[list[str], list[str]]:
    """Add the file's adapter to the model as `name`; returns (matched paths, unmatched file names).

    trainable=True makes the new factors and the file's full tensors trainable and freezes the rest."""
    built, unmatched = plan(model, adapter, strict=strict)
    extra = full_tensors(model, adapter)
    if unmatched:
        matched = [prefixed(p.component, p.path) for p in built.values()]
        warnings.warn(f"{adapter.path}: partial load: {len(built)} of {len(adapter.modules)} adapter modules loaded "
                      f"({per_component(matched)}); {len(unmatched)} match nothing and were skipped "
                      f"({per_component(unmatched)}), e.g. {unmatched[:20]}", AdapterWarning, stacklevel=3)
    # Every check passed: now change the model.
    by_path = {prefixed(p.component, p.path): adapter.modules[n] for n, p in built.items()}
    for p in built.values():
        p.slot.strength = float(strength)
    place(model, name, config_of(adapter, by_path), list(built.values()), trainable=trainable)
    with torch.no_grad():
        for tensor, value in extra:
            tensor.copy_(value)
    if trainable:
        freeze_all_but_adapters(model)
        for tensor, _ in extra:
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(True)
    return list(by_path), unmatched

"""merge / unmerge adapters into base weights, strengths, and running with adapters switched off.

Merged weights are formed in fp32 from each layer's kept original (see AdapterLayer), so unmerge is exact.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

from .errors import AdapterStateError, NonFiniteError
from .inject import adapter_layers, check_known
from .layers import quantized
from .strengths import Spec, adapter_places, resolve


# -- merge ---------------------------------------------------------------------------------------------------
def merge(model: Any, names: list[str] | str | None = None) -> int:
    """Merge adapters (default: all enabled) into the base weights, at their current strengths.

    The sum is formed in fp32 from the pristine weight and checked for NaN/inf before it is written; on
    failure every layer is put back as it was. Returns the number of layers changed.
    """
    names = [names] if isinstance(names, str) else names
    if names is not None:
        check_known(model, names)
    wanted = [(path, layer, [n for n, s in layer.adapters.items() if s.enabled and (names is None or n in names)])
              for path, layer in adapter_layers(model)]
    refuse_bias_free(wanted)
    refuse_quantized(wanted)
    before = [layer.snapshot() for _, layer, _ in wanted]
    changed = 0
    try:
        for _, layer, todo in wanted:
            changed += bool(layer.merge(todo))
    except NonFiniteError:
        # The failing layer wrote nothing; put the tensors of the layers before it back as they were.
        for (_, layer, _), state in zip(wanted, before):
            layer.restore(state)
        raise
    if changed == 0:
        warnings.warn("merge: nothing to merge (already merged, or no enabled adapters)", stacklevel=2)
    return changed


def refuse_bias_free(wanted: list[tuple[str, Any, list[str]]]) -> None:
    """Raise AdapterStateError, before anything changes, if a merge would need a bias a layer lacks:
    `wanted` is (layer path, AdapterLayer, adapter names to merge there)."""
    refused = [(path, layer.unmergeable(names)) for path, layer, names in wanted]
    refused = [(path, names) for path, names in refused if names]
    if refused:
        where = ", ".join(f"{path} ({', '.join(names)})" for path, names in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise AdapterStateError(f"{len(refused)} layer(s) have no bias for their adapters' diff_b: {where}{more}; "
                                "merging would need new parameters, so nothing was merged. Run those adapters "
                                "unmerged, or merge the others by name")


def refuse_quantized(wanted: list[tuple[str, Any, list[str]]]) -> None:
    """Raise AdapterStateError, before anything changes, if a merge would write into a quantized base weight
    (it would dequantize it)."""
    refused = [path for path, layer, names in wanted if names and quantized(layer.base_layer.weight)]
    if refused:
        raise AdapterStateError(f"{len(refused)} layer(s) have a quantized base weight, e.g. {refused[0]}; merging "
                                "would dequantize them, so nothing was merged. Run the adapters unmerged, or load "
                                "the base unquantized to merge")


def unmerge(model: Any, names: list[str] | str | None = None) -> int:
    """Undo merges (default: all) by restoring the original weight tensors; exact, no subtraction."""
    names = [names] if isinstance(names, str) else names
    changed = 0
    for _, layer in adapter_layers(model):
        if not layer.merged:
            continue
        keep = [n for n in layer.merged if names is not None and n not in names]
        layer.unmerge()
        if keep:
            layer.merge(keep)
        changed += 1
    if changed == 0:
        warnings.warn("unmerge: nothing is merged", stacklevel=2)
    return changed


# -- strengths -----------------------------------------------------------------------------------------------
def set_strength(model: Any, name: str, strength: Spec, *, component: str | None = None) -> None:
    """Set adapter `name`'s strength: a number, or any spec AdapterBank takes (per component, per block, lbw;
    see vislora.strengths), on one pipeline component only if `component` is given. The whole spec is checked
    before any layer changes; merged layers are re-merged from their original weights."""
    check_known(model, [name])
    pairs = adapter_places(model, name)
    if component is not None:
        pairs = [(p, layer) for p, layer in pairs if p.component == component]
        if not pairs:
            raise ValueError(f"adapter {name!r} has no layers in component {component!r}")
    values = resolve(name, strength, [p for p, _ in pairs])
    for (_, layer), value in zip(pairs, values):
        layer.adapters[name].strength = value
        if name in layer.merged:
            layer.refresh_merge()


@contextlib.contextmanager
def disabled(model: Any, names: list[str] | str | None = None) -> Iterator[None]:
    """Run the base model (without these adapters) inside the block; restored even if the block raises."""
    names = [names] if isinstance(names, str) else names
    slots = [s for _, layer in adapter_layers(model) for n, s in layer.adapters.items()
             if names is None or n in names]
    if any(layer.merged for _, layer in adapter_layers(model)):
        raise AdapterStateError("unmerge before disabling adapters: merged weights cannot be switched off")
    previous = [s.enabled for s in slots]
    for s in slots:
        s.enabled = False
    try:
        yield
    finally:
        for s, was in zip(slots, previous):
            s.enabled = was

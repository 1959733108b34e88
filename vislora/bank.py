"""AdapterBank: many adapters on one model, mixed by strength (global, per component, per block), fused or not.

    bank = vislora.AdapterBank(pipe)                    # a diffusers pipeline or any nn.Module
    bank.load("bold", "bold.safetensors")               # any file load_adapter reads
    bank.load("italic", "italic.safetensors", strength=0.5)
    bank.set_strengths({"bold": 0.7, "italic": {"unet.up": 0.0}})
    bank.fuse(); bank.set_strengths({"bold": 0.2}); bank.unfuse()

The bank is the many-adapter view of the same AdapterLayers `load_adapter` builds, not a second mechanism:
each layer's slot strength is the resolved spec (see `vislora.strengths`). Unfused, a layer runs all its
active adapters as one stacked low-rank pass (AdapterLayer._stacked), rebuilt only when strengths, the set
of adapters or their factors change. Fused, y = (W + sum strength * scale * delta W) x: every re-blend
re-fuses from the pristine weights, so any number of them leaves the base bit-identical on unfuse.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from .errors import AdapterStateError, NonFiniteError
from .inject import adapter_names, remove
from .io import LoadReport, load_adapter
from .layers import AdapterLayer
from .merge import refuse_bias_free
from .strengths import LayerPlace, Spec, adapter_places, check_names, resolve


class AdapterBank:
    """Adapters on `model` by name, each with a strength spec; `fuse()` merges the blend into the weights.

    pristine_device: where fused layers keep their original weights ("cpu" saves accelerator memory on a
    model that lives on a GPU; None: beside the weight). The copies stay in the model's dtype.
    """

    def __init__(self, model: Any, *, pristine_device: str | torch.device | None = None) -> None:
        self.model = model
        self.pristine_device = pristine_device
        self._specs: dict[str, Spec] = {}
        self._layers: dict[str, list[tuple[LayerPlace, AdapterLayer]]] = {}
        self._fused = False
        for name in adapter_names(model):  # adapters already on the model join the bank as they are
            self._index(name)
            first = self._layers[name][0][1].adapters[name]
            self._specs[name] = first.strength

    # -- what is loaded ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._specs)

    @property
    def strengths(self) -> dict[str, Spec]:
        """Each adapter's strength spec, as last given."""
        return dict(self._specs)

    @property
    def fused(self) -> bool:
        return self._fused

    def layer_strengths(self, name: str) -> dict[str, float]:
        """The strength each layer of adapter `name` runs at (component-prefixed paths)."""
        check_names(self.names, [name])
        return {p.path: layer.adapters[name].strength for p, layer in self._layers[name]}

    # -- load / unload -----------------------------------------------------------------------------------
    def load(self, name: str, path: str | os.PathLike, strength: Spec = 1.0, **kwargs: Any) -> LoadReport:
        """Load an adapter file (anything `load_adapter` reads) as `name` at `strength` (a spec).

        A bad file, a file for another base model or a strength that names no layer leaves the model as it was.
        """
        report = load_adapter(self.model, path, name, strength=0.0, **kwargs)
        try:
            self._index(name)
            values = resolve(name, strength, [p for p, _ in self._layers[name]])
            self._specs[name] = strength
            self._apply({name: values})
        except Exception:
            self._specs.pop(name, None)
            layers = [layer for _, layer in self._layers.pop(name, [])]
            remove(self.model, name)
            if self._fused:
                self._refuse([layer for layer in layers if layer.adapters])
            raise
        return report

    def unload(self, name: str) -> None:
        """Remove adapter `name`; layers left with no adapter become the original modules again."""
        check_names(self.names, [name])
        layers = [layer for _, layer in self._layers[name]]
        if self._fused:
            for layer in layers:
                layer.unmerge()
        remove(self.model, name)
        del self._specs[name], self._layers[name]
        if self._fused:
            self._refuse([layer for layer in layers if layer.adapters])

    # -- strengths ---------------------------------------------------------------------------------------
    def set_strengths(self, strengths: dict[str, Spec]) -> None:
        """Set the strength spec of each named adapter (others keep theirs). Every spec is checked before any
        layer changes; fused layers are re-fused from their pristine weights."""
        check_names(self.names, list(strengths))
        resolved = {n: resolve(n, spec, [p for p, _ in self._layers[n]]) for n, spec in strengths.items()}
        before = dict(self._specs)
        self._specs.update(strengths)
        try:
            self._apply(resolved)
        except (NonFiniteError, AdapterStateError):
            self._specs = before
            self._apply({n: resolve(n, before[n], [p for p, _ in self._layers[n]]) for n in strengths})
            raise

    def _apply(self, resolved: dict[str, list[float]]) -> None:
        changed: dict[int, AdapterLayer] = {}
        for name, values in resolved.items():
            for (_, layer), value in zip(self._layers[name], values):
                slot = layer.adapters[name]
                if slot.strength != value:
                    slot.strength = value
                    changed[id(layer)] = layer
        if self._fused:
            self._check_fusable(list(changed.values()))
            self._refuse(list(changed.values()))

    # -- fuse ----------------------------------------------------------------------------------------------
    def fuse(self) -> None:
        """Merge the current blend into the weights: no cost at inference. Warns and does nothing if fused."""
        if self._fused:
            warnings.warn("AdapterBank.fuse: already fused (change strengths to re-blend)", stacklevel=2)
            return
        layers = self._all_layers()
        self._check_fusable(layers)
        try:
            self._refuse(layers)
        except NonFiniteError:
            for layer in layers:
                layer.unmerge()
            raise
        self._fused = True

    def unfuse(self) -> None:
        """Put every original weight tensor back (exact). Warns if nothing is fused."""
        if not self._fused:
            warnings.warn("AdapterBank.unfuse: nothing is fused", stacklevel=2)
            return
        for layer in self._all_layers():
            layer.unmerge()
        self._fused = False

    def _refuse(self, layers: list[AdapterLayer]) -> None:
        """Each layer's weight = pristine + its active adapters' blend (or the pristine tensor, if none)."""
        for layer in layers:
            names = _blended(layer)
            if names:
                layer._write_merged(names, self.pristine_device, in_place=True)
            else:
                layer.unmerge()

    def _check_fusable(self, layers: list[AdapterLayer]) -> None:
        """AdapterStateError before any layer changes if a blend adds a diff_b to a layer without a bias."""
        if not any(layer.unmergeable(_blended(layer)) for layer in layers):
            return  # every re-blend passes here: name the layers (a walk over all adapters) only to refuse
        paths = {id(layer): p.path for pairs in self._layers.values() for p, layer in pairs}
        refuse_bias_free([(paths[id(layer)], layer, _blended(layer)) for layer in layers])

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _all_layers(self) -> list[AdapterLayer]:
        return list({id(layer): layer for pairs in self._layers.values() for _, layer in pairs}.values())

    def _index(self, name: str) -> None:
        """Where adapter `name`'s layers are, once, so that setting its strengths never scans the model."""
        self._layers[name] = adapter_places(self.model, name)

    def __repr__(self) -> str:
        state = "fused" if self._fused else "unfused"
        return f"AdapterBank({state}, {', '.join(f'{n}={s!r}' for n, s in self._specs.items()) or 'empty'})"


def _blended(layer: AdapterLayer) -> list[str]:
    """The adapters a fused layer folds in: enabled, at a non-zero strength."""
    return [n for n, s in layer.adapters.items() if s.enabled and s.strength != 0.0]

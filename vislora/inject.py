"""Model-level operations: inject, remove, trainable parameters, status (merge and strengths: merge.py).

Everything resolves targets and checks names before it changes the model, so a failed call leaves the
model as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import nn

from .components import components, prefixed, route, set_module
from .config import AdapterConfig, TargetsArg
from .errors import AdapterCompatError, AdapterStateError
from .functional import KINDS, kind_for
from .layers import AdapterLayer
from .slot import AdapterSlot
from .targets import Target, resolve

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_CONFIGS_ATTR = "_vislora_configs"


@dataclass
class InjectReport:
    """What `inject` did: wrapped module paths (component-prefixed for pipelines) and parameter counts."""

    name: str
    matched: list[str]
    per_target: dict[str, int]
    trainable_params: int
    total_params: int
    modules_to_save: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        share = 100.0 * self.trainable_params / max(self.total_params, 1)
        lines = [f"adapter {self.name!r}: {len(self.matched)} modules, "
                 f"{self.trainable_params:,} trainable of {self.total_params:,} parameters ({share:.2f}%)"]
        lines += [f"  {pattern}: {count} modules" for pattern, count in self.per_target.items()]
        if self.modules_to_save:
            lines.append(f"  trained in full: {', '.join(self.modules_to_save)}")
        return "\n".join(lines)


@dataclass
class Placement:
    """One adapter slot ready to go in: its component, the module's path there, the module found at that
    path (a bare layer or an AdapterLayer), the AdapterLayer that will hold the slot, and the slot."""

    component: str
    path: str
    module: nn.Module
    layer: AdapterLayer
    slot: AdapterSlot

    @classmethod
    def wrap(cls, component: str, path: str, module: nn.Module) -> tuple["Placement", AdapterLayer]:
        """A placement without its slot yet, and the layer to build the slot from."""
        layer = module if isinstance(module, AdapterLayer) else AdapterLayer(module)
        return cls(component, path, module, layer, None), layer  # type: ignore[arg-type]


# -- helpers ---------------------------------------------------------------------------------------------
def adapter_layers(model: Any) -> Iterator[tuple[str, AdapterLayer]]:
    """(component-prefixed path, layer) for every AdapterLayer in the model."""
    for comp, root in components(model).items():
        for path, module in root.named_modules():
            if isinstance(module, AdapterLayer):
                yield prefixed(comp, path), module


def configs(model: Any) -> dict[str, AdapterConfig]:
    """The configs of the adapters on this model, by name (kept on the model object, not in its state)."""
    found = getattr(model, _CONFIGS_ATTR, None)
    if found is None:
        found = {}
        object.__setattr__(model, _CONFIGS_ATTR, found)  # plain attribute: not a module, not state
    return found


def adapter_names(model: Any) -> list[str]:
    names: dict[str, None] = {}
    for _, layer in adapter_layers(model):
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def check_new_name(model: Any, name: str) -> None:
    """A valid adapter name that this model does not use yet."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"adapter names use letters, digits, '_' and '-' only; got {name!r}")
    if name in adapter_names(model):
        raise AdapterStateError(f"adapter {name!r} is already on this model; remove it first or pick another name")


def check_known(model: Any, names: list[str]) -> None:
    """Every name is an adapter on this model."""
    known = adapter_names(model)
    missing = [n for n in names if n not in known]
    if missing:
        raise AdapterStateError(f"no adapter named {missing} on this model; it has {known}")


def _slot_for(target: Target, layer: AdapterLayer, config: AdapterConfig) -> AdapterSlot:
    rank = target.rank or config.rank
    alpha = target.alpha if target.alpha is not None else (config.alpha if config.alpha is not None else rank)
    kind = kind_for(layer.base_layer, config.preferred_kinds())
    if target.slices and not getattr(KINDS[kind], "ROW_SLICES", False):
        raise AdapterCompatError(f"{target.path}: {kind!r} adapters do not take q/k/v slices; drop the [..] suffix")
    return layer.new_slot(kind, rank, alpha, slices=target.slices, rslora=config.rslora, dropout=config.dropout,
                          init=config.init)


def freeze_all_but_adapters(model: Any) -> None:
    """requires_grad=False for every parameter that is not an adapter factor (factors keep their setting)."""
    for root in components(model).values():
        adapter_params = {id(p) for m in root.modules() if isinstance(m, AdapterSlot) for p in m.parameters()}
        for p in root.parameters():
            if id(p) not in adapter_params:
                p.requires_grad_(False)


def place(model: Any, name: str, config: AdapterConfig, placements: list[Placement], *, trainable: bool) -> None:
    """Put built slots into the model as adapter `name` (wrapping bare layers) and record its config.

    Callers build every slot first, so errors surface before the model changes."""
    parts = components(model)
    for p in placements:
        if p.layer is not p.module:
            set_module(parts[p.component], p.path, p.layer)
        p.slot.requires_grad_(trainable)
        p.layer.add(name, p.slot)
    configs(model)[name] = config


# -- inject / remove ---------------------------------------------------------------------------------------
def inject(
    model: Any,
    target: AdapterConfig | TargetsArg,
    *,
    rank: int = 8,
    alpha: float | None = None,
    name: str = "default",
    dropout: float = 0.0,
    rslora: bool = False,
    conv: str = "locon",
    linear: str = "lora",
    init: str = "default",
    modules_to_save: tuple[str, ...] | list[str] = (),
    trainable: bool = True,
) -> InjectReport:
    """Add adapter `name` to every module the targets match; freeze everything else.

    `target` is an AdapterConfig, or targets (preset, glob, regex, list, or {target: rank}) with the
    keyword settings. Only the new adapter's factors and `modules_to_save` stay trainable.
    """
    config = target if isinstance(target, AdapterConfig) else AdapterConfig(
        target, rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, conv=conv, linear=linear, init=init,
        modules_to_save=tuple(modules_to_save))
    check_new_name(model, name)
    parts = components(model)
    plan: list[tuple[str, list[Target]]] = []
    per_target: dict[str, int] = {}
    for comp, rules in route(model, list(config.targets)).items():
        targets, counts = resolve(parts[comp], rules, where=comp or "model")
        plan.append((comp, targets))
        per_target.update({prefixed(comp, k): v for k, v in counts.items()})
    # modules_to_save are paths within the single component of a plain model, or "component.path".
    save_paths = resolve_saved(model, config.modules_to_save)

    # Build every slot before touching the model, so an error here changes nothing.
    built = []
    for comp, targets in plan:
        for t in targets:
            placement, layer = Placement.wrap(comp, t.path, t.module)
            placement.slot = _slot_for(t, layer, config)
            built.append(placement)

    freeze_all_but_adapters(model)
    place(model, name, config, built, trainable=trainable)
    for comp, path in save_paths:
        parts[comp].get_submodule(path).requires_grad_(trainable)
    matched = [prefixed(p.component, p.path) for p in built]

    trainable_count = sum(p.numel() for p in trainable_parameters(model))
    total = sum(p.numel() for root in parts.values() for p in root.parameters())
    return InjectReport(name, matched, per_target, trainable_count, total,
                        [prefixed(c, p) for c, p in save_paths])


def resolve_saved(model: Any, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(component, path) of each modules_to_save entry: a path in a plain model, "component.path" on pipelines."""
    parts = components(model)
    out = []
    for n in names:
        comp, _, path = ("", "", n) if "" in parts else n.partition(".")
        try:
            parts[comp].get_submodule(path)
        except (KeyError, AttributeError):
            raise AdapterCompatError(f"modules_to_save: {n!r} names no module of this model "
                                     "(on pipelines write 'component.path')") from None
        out.append((comp, path))
    return out


def remove(model: Any, names: list[str] | str | None = None, *, keep_merged: bool = False) -> int:
    """Remove adapters (default: all). Layers left with none become the original module again.

    Merged adapters are unmerged first, unless keep_merged=True, which bakes them into the base weight.
    Returns the number of layers changed.
    """
    names = [names] if isinstance(names, str) else names
    if names is not None:
        check_known(model, names)
    changed = 0
    for comp, root in components(model).items():
        for path, layer in [(p, m) for p, m in root.named_modules() if isinstance(m, AdapterLayer)]:
            drop = [n for n in layer.adapters if names is None or n in names]
            if not drop:
                continue
            changed += 1
            if layer.drop(drop, keep_merged=keep_merged):
                set_module(root, path, layer.base_layer)
    for n in list(configs(model)):
        if names is None or n in names:
            del configs(model)[n]
    return changed


def trainable_parameters(model: Any) -> list[nn.Parameter]:
    """The parameters an optimizer should get: those left trainable (adapters and modules_to_save)."""
    return [p for root in components(model).values() for p in root.parameters() if p.requires_grad]


def status(model: Any) -> dict[str, dict[str, Any]]:
    """Per layer: its adapters with kind, rank, alpha, strength, enabled, merged."""
    out = {}
    for path, layer in adapter_layers(model):
        out[path] = {n: {"kind": s.kind, "rank": s.rank, "alpha": s.alpha, "strength": s.strength,
                         "enabled": s.enabled, "merged": n in layer.merged} for n, s in layer.adapters.items()}
    return out



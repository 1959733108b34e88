"""AdapterConfig: everything needed to rebuild an adapter's structure; stored as JSON in saved files."""

from __future__ import annotations

import math

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Union

from torch import nn

from .functional import KINDS
from .targets import TargetRule

TargetsArg = Union[str, list, tuple, Mapping[str, Any]]

INITS = ("default", "random")


def kinds_for(base: type) -> tuple[str, ...]:
    """The KINDS entries that apply to this layer class (e.g. nn.Conv2d -> ("locon", "tucker"))."""
    return tuple(name for name, kind in KINDS.items() if issubclass(base, kind.BASES))


def _rules(targets: TargetsArg) -> tuple[TargetRule, ...]:
    """Accepts "vit.attn", ["unet.attn", "unet.conv"], or {"unet.attn": 4, "unet.conv": {"rank": 8, "alpha": 4}}."""
    if isinstance(targets, str):
        return (TargetRule(targets),)
    if isinstance(targets, Mapping):
        rules = []
        for pattern, spec in targets.items():
            if spec is None:
                rules.append(TargetRule(pattern))
            elif isinstance(spec, int) and not isinstance(spec, bool):
                rules.append(TargetRule(pattern, rank=spec))
            elif isinstance(spec, Mapping) and set(spec) <= {"rank", "alpha"}:
                rules.append(TargetRule(pattern, spec.get("rank"), spec.get("alpha")))
            else:
                raise ValueError(f"target {pattern!r}: expected a rank or {{'rank': .., 'alpha': ..}}, got {spec!r}")
        return tuple(rules)
    rules = []
    for item in targets:
        if isinstance(item, TargetRule):
            rules.append(item)
        elif isinstance(item, str):
            rules.append(TargetRule(item))
        elif isinstance(item, Mapping) and "pattern" in item:
            rules.append(TargetRule(item["pattern"], item.get("rank"), item.get("alpha")))
        else:
            raise ValueError(f"cannot read target {item!r}")
    return tuple(rules)


@dataclass
class AdapterConfig:
    """How to build an adapter.

    targets: preset names, globs or regexes, optionally with per-target rank/alpha (see `vislora.targets`).
    rank, alpha: defaults for every target; alpha=None means alpha = rank (scale 1).
    scale = alpha / rank, or alpha / sqrt(rank) with rslora.
    linear: the kind for Linear layers ("lora"; any KINDS entry for nn.Linear).
    conv: "locon" (k x k down, 1 x 1 up) or "tucker" (1 x 1 down, k x k core, 1 x 1 up) for k x k convs
    (any KINDS entry for nn.Conv2d).
    init: "default" (up = 0: a fresh adapter is an exact no-op) or "random" (non-zero, for checks).
    dora: DoRA (weight-decomposed): W' = magnitude * (W + scale * delta W) / ||W + scale * delta W|| per output
    row, with a trainable magnitude starting at that norm (see vislora.functional.dora). Files from before
    this field load as dora=False.
    modules_to_save: modules trained in full and saved with the adapter (e.g. a new classifier "head").
    """

    targets: TargetsArg
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    rslora: bool = False
    conv: str = "locon"
    linear: str = "lora"
    init: str = "default"
    dora: bool = False
    modules_to_save: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.targets = _rules(self.targets)
        self.modules_to_save = tuple(self.modules_to_save)
        if not self.targets:
            raise ValueError("an adapter needs at least one target")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for option, base in (("conv", nn.Conv2d), ("linear", nn.Linear)):
            if getattr(self, option) not in kinds_for(base):
                raise ValueError(f"{option} must be one of {kinds_for(base)}, got {getattr(self, option)!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a finite number > 0 (a stored 0 disables the adapter in other tools), "
                             f"got {self.alpha}")

    def preferred_kinds(self) -> dict[type, str]:
        """The kind this config asks for, per base layer class (see functional.kind_for)."""
        return {nn.Linear: self.linear, nn.Conv2d: self.conv}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = [asdict(r) for r in self.targets]
        d["modules_to_save"] = list(self.modules_to_save)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdapterConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

"""Which modules an adapter goes into: presets as data, plus user globs and regexes.

A target string is one of
    a preset name        "vit.attn", "unet.cross_attn", "transformer.attn", "text.attn"   (see `PRESETS`)
    a glob               "blocks.*.attn.qkv"          (fnmatch over dotted module paths)
    a regex              "re:blocks\\.(0|1)\\.attn\\.qkv" (full match)
and a glob or regex may end in a slice list for fused qkv layers: "blocks.*.attn.qkv[q,v]".
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from ..errors import AdapterCompatError
from . import clip_text, sd_unet, timm_vit, transformer
from .presets import Pattern, Preset

PRESETS: dict[str, Preset] = {**timm_vit.PRESETS, **sd_unet.PRESETS, **transformer.PRESETS, **clip_text.PRESETS}

QKV_PARTS = {"q": 0, "k": 1, "v": 2}
_SLICE_SUFFIX = re.compile(r"^(?P<body>.*)\[(?P<parts>[qkv](?:\s*,\s*[qkv])*)\]$")


@dataclass(frozen=True)
class TargetRule:
    """A target string with optional per-target rank and alpha (None: the adapter's default)."""

    pattern: str
    rank: int | None = None
    alpha: float | None = None


@dataclass
class Target:
    """A module that will get an adapter: dotted path within its component, and its settings."""

    path: str
    module: nn.Module
    rank: int | None
    alpha: float | None
    slices: tuple[tuple[int, int], ...] | None  # output row ranges, for fused qkv slices
    rule: str


def adaptable_modules(root: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and ungrouped Conv2d by dotted path; an already wrapped layer counts under its own path."""
    from ..layers import AdapterLayer  # layers depends on functional only; keep the import one-way at load

    found: dict[str, nn.Module] = {}
    inside: list[str] = []
    for path, module in root.named_modules():
        if any(path.startswith(p) for p in inside):
            continue
        if isinstance(module, AdapterLayer):
            found[path] = module
            inside.append(path + ".")
        elif isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            found[path] = module
    return found


def _patterns(target: str) -> list[Pattern]:
    if target in PRESETS:
        return list(PRESETS[target].patterns)
    slices: tuple[str, ...] = ()
    m = _SLICE_SUFFIX.match(target)
    if m:
        target = m["body"]
        slices = tuple(p.strip() for p in m["parts"].split(","))
    regex = target[3:] if target.startswith("re:") else fnmatch.translate(target)
    try:
        re.compile(regex)
    except re.error as e:
        raise AdapterCompatError(f"target {target!r} is not a valid regex: {e}") from None
    return [Pattern(regex, slices)]


def _row_slices(path: str, module: nn.Module, parts: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    base = getattr(module, "base_layer", module)
    if not isinstance(base, nn.Linear) or base.out_features % 3:
        raise AdapterCompatError(
            f"{path}: q/k/v slices need a fused Linear whose outputs split in three; this is {base}"
        )
    third = base.out_features // 3
    order = sorted(set(QKV_PARTS[p] for p in parts))
    return tuple((i * third, (i + 1) * third) for i in order)


def resolve(root: nn.Module, rules: list[TargetRule], where: str = "model") -> tuple[list[Target], dict[str, int]]:
    """Match rules against `root`. Later rules override the rank/alpha of earlier ones on the same module.

    Returns the targets in module order and the number of modules each rule matched. A rule that matches
    nothing raises AdapterCompatError listing example module names, so a typo never becomes a no-op.
    """
    modules = adaptable_modules(root)
    chosen: dict[str, Target] = {}
    counts: dict[str, int] = {}
    for rule in rules:
        compiled = [(re.compile(p.regex), p.slices) for p in _patterns(rule.pattern)]
        hits = 0
        for path, module in modules.items():
            slices = next((s for rx, s in compiled if rx.fullmatch(path)), None)
            if slices is None:
                continue
            hits += 1
            prev = chosen.get(path)
            chosen[path] = Target(
                path,
                module,
                rule.rank if rule.rank is not None else (prev.rank if prev else None),
                rule.alpha if rule.alpha is not None else (prev.alpha if prev else None),
                _row_slices(path, module, slices) if slices else (prev.slices if prev else None),
                rule.pattern,
            )
        if hits == 0:
            examples = ", ".join(list(modules)[:8]) or "(no Linear or Conv2d layers at all)"
            raise AdapterCompatError(
                f"target {rule.pattern!r} matches no Linear/Conv2d module in the {where}. "
                f"Module names look like: {examples}. Presets: {', '.join(PRESETS)}"
            )
        counts[rule.pattern] = hits
    order = {p: i for i, p in enumerate(modules)}
    return sorted(chosen.values(), key=lambda t: order[t.path]), counts


__all__ = ["PRESETS", "Pattern", "Preset", "Target", "TargetRule", "adaptable_modules", "resolve"]

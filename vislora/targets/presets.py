"""Preset and pattern types shared by the per-model preset tables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    """A regex over dotted module paths (full match). `slices` picks parts of a fused qkv: ("q", "v")."""

    regex: str
    slices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    """Named target set. `family` says which pipeline component it applies to (vit, unet, text)."""

    family: str
    patterns: tuple[Pattern, ...]
    doc: str = ""


ANY_PREFIX = r"(?:.*\.)?"

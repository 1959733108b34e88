"""Adapter files: one module per format, all producing the same in-memory `AdapterFile`.

A reader turns a file's tensors into per-module factors in vislora's own shapes (see vislora.functional)
plus the alpha that gives each module's scale. Nothing here touches a model; matching against a model
happens in vislora.io.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import AdapterConfig


@dataclass
class ModuleWeights:
    """One module's adapter: kind ("lora", "locon", "tucker"), factors, and its scale's alpha."""

    kind: str
    factors: dict[str, torch.Tensor]
    rank: int
    alpha: float
    rslora: bool = False
    slices: tuple[tuple[int, int], ...] | None = None  # output row ranges for fused qkv slices
    magnitude: torch.Tensor | None = None  # DoRA magnitude, in LyCORIS's shape ([out, 1, ...] or [1, in, ...])

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.rslora else self.rank)


@dataclass
class AdapterFile:
    """A parsed adapter file. Module paths carry a component prefix ("unet.") where the file has one."""

    path: str
    format: str
    modules: dict[str, ModuleWeights]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save tensors by full name
    config: AdapterConfig | None = None
    metadata: dict[str, str] = field(default_factory=dict)

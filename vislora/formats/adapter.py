"""The one in-memory description every file format reads to and writes from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import AdapterConfig
from ..functional import scale
from ..functional.rows import RowLayout, fused_up


@dataclass
class ModuleWeights:
    """One module's adapter: its kind (a functional.KINDS name), factors in vislora's own shapes (see the kind's
    `shapes`), rank and alpha as stored (scale = functional.scale(alpha, rank, rslora)), and what writing needs."""

    kind: str
    factors: dict[str, torch.Tensor]
    rank: int
    alpha: float
    rslora: bool = False
    slices: tuple[tuple[int, int], ...] | None = None  # output row ranges for fused qkv slices (LoRA)
    out_features: int | None = None  # the base layer's output rows: needed to write sliced LoRA as plain LoRA
    magnitude: torch.Tensor | None = None  # DoRA magnitude, in LyCORIS's shape ([out, 1, ...] or [1, in, ...])

    @property
    def scale(self) -> float:
        return scale(self.alpha, self.rank, self.rslora)

    def plain(self) -> tuple[dict[str, torch.Tensor], int]:
        """(factors, rank) of the equivalent adapter without slices: a q/v-sliced LoRA of rank r is the plain
        LoRA of rank k*r whose up is block-diagonal (same scale)."""
        if self.slices is None:
            return dict(self.factors), self.rank
        if self.out_features is None:
            raise ValueError("writing a sliced LoRA as plain LoRA needs the base layer's out_features")
        factors = dict(self.factors, up=fused_up(self.factors["up"], RowLayout(self.out_features, self.slices)))
        return factors, factors["down"].shape[0]


@dataclass
class AdapterFile:
    """A parsed adapter file. Module paths are the host model's dotted names, with a component prefix
    ("unet.") where the file has one; `extra` holds full tensors (modules_to_save) by the same naming."""

    path: str
    format: str
    modules: dict[str, ModuleWeights]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    config: AdapterConfig | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # component -> its file, when read from several

    def source_of(self, name: str) -> str:
        """The file module `name` came from (a per-component folder's subfolder file, else `path`)."""
        return self.sources.get(name.partition(".")[0], self.path) if "." in name else self.path

"""What the page shows about each adapter file, before any model is involved.

`describe(path)` is the one place that reads per-file facts; it reads headers only (formats.read with
values=False) and is the seam where `vislora inspect`'s report plugs in. Compatibility with the loaded model is not guessed
here: the studio loads each readable file into its AdapterBank, and the loader's own typed error (which
names the mismatching tensor and, for cross-attention widths, the architecture) is the reason shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VisloraError
from ..formats import read

# Cross-attention width (the input width of attn2.to_k / to_v) -> the base family a UNet adapter was made for.
ARCH_BY_CROSS_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_CROSS_KV = re.compile(r"(^|\.)attn2\.to_[kv]$")


@dataclass
class AdapterFacts:
    """One file as the page lists it. `error` is the reason it cannot be switched on ("" when it can)."""

    key: str
    format: str = "?"
    kinds: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    base: str = "?"
    modules: int = 0
    error: str = ""

    @property
    def usable(self) -> bool:
        return not self.error

    def summary(self) -> str:
        """One line: kind, rank, components, base family, or the reason it is refused. Only files the bank
        loaded keep an empty error, so "fits this model" is the loader's verdict, not a guess."""
        if not self.usable:
            return f"refused: {self.error}"
        ranks = ",".join(map(str, self.ranks))
        return (f"{'/'.join(self.kinds)} rank {ranks}, {self.modules} modules on {' + '.join(self.components)}; "
                f"made for {self.base}; {self.format} file; fits this model")


def base_family(modules: dict) -> str:
    """The base family from the width of cross-attention key/value inputs, or "unknown" without them."""
    for path, weights in modules.items():
        down = weights.factors.get("down")
        if _CROSS_KV.search(path) and down is not None and down.dim() == 2:
            width = int(down.shape[1])
            return ARCH_BY_CROSS_WIDTH.get(width, f"a cross-attention width of {width}")
    return "unknown (no cross-attention layers)"


def describe(key: str, path: Path) -> AdapterFacts:
    """Read one file's facts from its header (no tensor data: a folder of large files lists at once); a file
    that cannot be read gets the reader's typed message as its error."""
    try:
        parsed = read(path, values=False)
    except VisloraError as e:
        return AdapterFacts(key, error=_short(str(e), path))
    modules = parsed.modules
    return AdapterFacts(
        key,
        format=parsed.format,
        kinds=sorted({w.kind for w in modules.values()}),
        ranks=sorted({w.rank for w in modules.values()}),
        components=sorted({p.partition(".")[0] for p in modules}) if modules else [],
        base=base_family(modules),
        modules=len(modules),
    )


def _short(message: str, path: Path) -> str:
    """The error without the full path prefix: the page already shows the file name."""
    return message.replace(f"{path}: ", "", 1).strip()

"""What the page shows about each adapter file, before any model is involved.

`describe(path)` reads a file's facts exactly as `vislora inspect` does (vislora.tools.inspect.describe: the
header only, any format, any family): format, kinds, ranks, modules per component (a kohya file's
`lora_unet_...` names resolved to `unet`, a Flux file's to `transformer`) and the base it was made for
(Flux.1, Flux.2, SD3, or a UNet by its cross-attention width). Compatibility with the loaded model is not
guessed here: the studio loads each readable file into its AdapterBank, and the loader's own typed error
(which names the mismatching tensor and, for another base, both bases) is the reason shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VisloraError
from ..tools.inspect import describe as inspect_file


@dataclass
class AdapterFacts:
    """One file as the page lists it. `error` is the reason it cannot be switched on ("" when it can).
    `components` counts modules per component, as `inspect` does ({"unet": 32, "text_encoder": 12})."""

    key: str
    format: str = "?"
    kinds: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    components: dict[str, int] = field(default_factory=dict)
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
        parts = " + ".join(f"{name} {count}" for name, count in self.components.items())
        return (f"{'/'.join(self.kinds)} rank {ranks}, {self.modules} modules on {parts}; "
                f"made for {self.base}; {self.format} file; fits this model")


def base_text(base: dict) -> str:
    """inspect's `base` as words: the family or SD version, else the cross-attention width, else unknown."""
    if base["name"]:
        return base["name"]
    if base["cross_attention_width"]:
        return f"a cross-attention width of {base['cross_attention_width']}"
    return "unknown (no cross-attention layers)"


def describe(key: str, path: Path) -> AdapterFacts:
    """Read one file's facts from its header (no tensor data: a folder of large files lists at once); a file
    that cannot be read gets the reader's typed message as its error."""
    try:
        info = inspect_file(path)
    except VisloraError as e:
        return AdapterFacts(key, error=_short(str(e), path))
    return AdapterFacts(
        key,
        format=info["format"],
        kinds=sorted(info["kinds"]),
        ranks=sorted(int(r) for r in info["ranks"]),
        components=info["components"],
        base=base_text(info["base"]),
        modules=info["modules"],
    )


def _short(message: str, path: Path) -> str:
    """The error without the full path prefix: the page already shows the file name."""
    return message.replace(f"{path}: ", "", 1).strip()

"""What the page's controls mean: one adapter's sliders -> the AdapterBank strength spec, and the request.

    Mix(on=True, strength=0.7).spec(...)                       0.7
    Mix(on=True, strength=0.7, text_encoder=0.0).spec(...)     {"*": 0.7, "text_encoder": 0.0}
    Mix(on=True, strength=1, up=0.5, lbw="OUTD").spec(...)     {"*": 1.0, "unet.up": 0.5, "lbw": "OUTD"}
    Mix(on=True, strength=0.8, single=0.0).spec(...)           {"*": 0.8, "single": 0.0}   (a Flux adapter)

A section factor left at 1 is left out of the spec, and so is a section the adapter has no layers in (the
bank refuses keys that match nothing), so the simplest mix stays a plain number, as on the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import VisloraError

STRENGTH_RANGE = (-1.0, 2.0)
STEPS_RANGE = (1, 150)
SIZE_RANGE = (8, 2048)
# Section slider -> (bank spec key, the layer-path prefix that must exist for the key to mean anything).
SECTIONS = {
    "unet": ("unet", "unet."),
    "text_encoder": ("text_encoder", "text_encoder."),
    "down": ("unet.down", "unet.down_blocks."),
    "mid": ("unet.mid", "unet.mid_block."),
    "up": ("unet.up", "unet.up_blocks."),
    # diffusion transformers: Flux's double (SD3's joint) blocks and Flux's single blocks
    "transformer": ("transformer", "transformer."),
    "double": ("double", "transformer.transformer_blocks."),
    "single": ("single", "transformer.single_transformer_blocks."),
}
UNET_LBW_HINT = "lbw (e.g. 1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1 or OUTD)"


def sections_for(layer_paths: list[str]) -> list[str]:
    """The section sliders that mean something for an adapter with layers at `layer_paths`."""
    return [s for s, (_, prefix) in SECTIONS.items() if any(p.startswith(prefix) for p in layer_paths)]


def lbw_hint(dit_blocks: tuple[int, int] | None) -> str:
    """The lbw box's label: A1111's 17-value list on a UNet; on a diffusion transformer with (double, single)
    blocks, its block vector (BASE, each double / joint block, each single block); the example turns the single
    blocks off."""
    if dit_blocks is None:
        return UNET_LBW_HINT
    doubles, singles = dit_blocks
    parts = f"{doubles} double (joint) blocks" + (f", then {singles} single blocks" if singles else "")
    example = ",".join(["1"] * (1 + doubles) + ["0"] * singles)
    return f"lbw: {1 + doubles + singles} values, BASE then {parts} (e.g. {example})"


class StudioInputError(VisloraError):
    """A value from the page that cannot be used; nothing changed."""


def finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StudioInputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Mix:
    """One adapter's controls: switch, global strength, per-section factors, and an optional lbw string."""

    on: bool = False
    strength: float = 1.0
    unet: float = 1.0
    text_encoder: float = 1.0
    down: float = 1.0
    mid: float = 1.0
    up: float = 1.0
    transformer: float = 1.0
    double: float = 1.0
    single: float = 1.0
    lbw: str = ""

    def check(self, name: str) -> None:
        for f in fields(self):
            if f.name not in ("on", "lbw"):
                finite(getattr(self, f.name), f"{name}: {f.name}")
        if not STRENGTH_RANGE[0] <= self.strength <= STRENGTH_RANGE[1]:
            raise StudioInputError(f"{name}: strength {self.strength} is outside {STRENGTH_RANGE}")

    @property
    def simple(self) -> bool:
        """Whether the spec is one number (what `vislora generate --lora FILE:W` takes)."""
        return all(getattr(self, s) == 1.0 for s in SECTIONS) and not self.lbw.strip()

    def spec(self, layer_paths: list[str]) -> float | dict[str, float | str]:
        """The bank spec for this adapter, whose layers are at `layer_paths` (component-prefixed)."""
        if not self.on:
            return 0.0
        if self.simple:
            return float(self.strength)
        spec: dict[str, float | str] = {"*": float(self.strength)}
        for slider in sections_for(layer_paths):
            value = getattr(self, slider)
            if value != 1.0:
                spec[SECTIONS[slider][0]] = float(value)
        if self.lbw.strip():
            spec["lbw"] = self.lbw.strip().removeprefix("lbw:")
        return spec


@dataclass(frozen=True)
class Request:
    """One image: prompt and sampler settings, the mix by adapter key (file name), fused or not."""

    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0  # vislora generate's default
    width: int = 32
    height: int = 32
    fused: bool = False
    mixes: dict[str, Mix] = field(default_factory=dict)

    def check(self) -> None:
        """Raise StudioInputError naming the first bad value."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise StudioInputError("the prompt is empty; type what to draw, e.g. 'a handwritten digit three'")
        finite(self.guidance, "guidance")
        for what, value, (lo, hi) in (("steps", self.steps, STEPS_RANGE), ("width", self.width, SIZE_RANGE),
                                      ("height", self.height, SIZE_RANGE), ("seed", self.seed, (0, 2**63 - 1))):
            if finite(value, what) != int(value) or not lo <= value <= hi:
                raise StudioInputError(f"{what} must be a whole number in [{lo}, {hi}], got {value!r}")
        for what in ("width", "height"):
            if int(getattr(self, what)) % 8:
                raise StudioInputError(f"{what} must be a multiple of 8 (the VAE's scale), got {getattr(self, what)}")
        for name, mix in self.mixes.items():
            mix.check(name)

    def active(self) -> dict[str, Mix]:
        """The adapters that change the image (on, with a non-zero strength), in the request's order."""
        return {k: m for k, m in self.mixes.items() if m.on and m.strength != 0.0}

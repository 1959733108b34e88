"""The studio's state: one pipeline, its AdapterBank holding every usable file of the adapter folder, and one
lock so that one image is made at a time.

    studio = Studio("samples/digits_sd", "adapters/", "studio_out/")
    studio.facts["bold.safetensors"].summary()
    shot = studio.render(Request("a handwritten digit three", mixes={"bold.safetensors": Mix(True, 0.7)}))
    shot.image, shot.seconds

Every file is loaded at start at strength 0 (switched off), in file-name order; the loader's checks decide
compatibility, so a file it refuses shows the loader's reason and never reaches the model. A request is
checked in full before anything changes: a bad value leaves strengths, fusing and the last image as they
were. `bump()` marks every earlier request stale; a stale render stops at its next denoising step.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import VisloraError
from .catalogue import AdapterFacts, describe
from .mix import Mix, Request, StudioInputError, lbw_hint, sections_for
from .paths import AdapterFolder, OutputFolder

LIVE_SECONDS = 1.0
OnStep = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class Shot:
    """A finished image, the request that made it, and its time (denoising + decoding) in seconds."""

    request: Request
    image: Any  # PIL.Image
    seconds: float
    number: int  # 1 for the studio's first image, then counting up


def bank_name(key: str, taken: set[str]) -> str:
    """An adapter name the bank accepts (letters, digits, '_', '-') from a file name, unique among `taken`."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", Path(key).stem) or "adapter"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


class Studio:
    """The pipeline at `model_dir`, every adapter in `adapters_dir`, exports under `out_dir`."""

    def __init__(self, model_dir: str | Path, adapters_dir: str | Path, out_dir: str | Path, *,
                 live_seconds: float = LIVE_SECONDS, model_config: str | None = None,
                 revision: str | None = None) -> None:
        from .. import AdapterBank
        from ..diffusion.generate import Source
        from .generation import load_pipeline

        self.live_seconds = live_seconds  # previews follow the sliders while an image takes less than this
        self.folder = AdapterFolder(adapters_dir)
        self.outputs = OutputFolder(out_dir)
        # source: what exports name to load the same weights (a hub id pinned to its commit)
        self.pipe, self.source = load_pipeline(Source(str(model_dir), model_config, revision))
        self.bank = AdapterBank(self.pipe)
        self.facts: dict[str, AdapterFacts] = {}
        self.names: dict[str, str] = {}  # file key -> bank name
        self._lock = threading.Lock()
        self._latest = 0
        self.seconds: dict[bool, float] = {}  # fused? -> last measured seconds per image
        self.last: Shot | None = None
        self._count = 0
        for listed in self.folder.files:
            self.facts[listed.key] = self._admit(listed.key, listed.path, listed.refused)

    def _admit(self, key: str, path: Path, refused: str) -> AdapterFacts:
        if refused:
            return AdapterFacts(key, error=refused)
        facts = describe(key, path)
        if not facts.usable:
            return facts
        name = bank_name(key, set(self.names.values()))
        try:
            self.bank.load(name, path, strength=0.0)
        except (VisloraError, ValueError) as e:
            facts.error = str(e).replace(f"{path}: ", "", 1)
            return facts
        self.names[key] = name
        return facts

    # -- requests --------------------------------------------------------------------------------------------
    def bump(self) -> int:
        """A newer request exists: renders started before this stop at their next step."""
        self._latest += 1
        return self._latest

    def _specs(self, request: Request) -> dict[str, Any]:
        """Bank spec for every loaded adapter (those the request leaves out are off); refuses unknown keys."""
        for key, mix in request.mixes.items():
            if key not in self.facts:
                raise StudioInputError(f"{key!r} is not a file of the adapter folder; pick one from the list")
            if mix.on and key not in self.names:
                raise StudioInputError(f"{key} cannot be switched on: {self.facts[key].error}")
        return {name: self.spec(key, request.mixes.get(key, Mix())) for key, name in self.names.items()}

    def spec(self, key: str, mix: Mix) -> Any:
        """The bank strength spec of `mix` for the loaded file `key`."""
        return mix.spec(list(self.bank.layer_strengths(self.names[key])))

    def controls(self, key: str) -> tuple[list[str], str]:
        """For the loaded file `key`: the section sliders that apply to its layers, and the lbw box's label."""
        from ..strengths import dit_blocks

        return sections_for(list(self.bank.layer_strengths(self.names[key]))), lbw_hint(dit_blocks(self.pipe))

    def _apply(self, request: Request) -> None:
        """Strengths and fusing as the request says; a spec the bank refuses changes nothing."""
        try:
            self.bank.set_strengths(self._specs(request))
        except StudioInputError:
            raise
        except (VisloraError, ValueError) as e:
            raise StudioInputError(str(e)) from None
        if request.fused != self.bank.fused:
            self.bank.fuse() if request.fused else self.bank.unfuse()

    def render(self, request: Request, on_step: OnStep | None = None, ticket: int | None = None) -> Shot | None:
        """Make one image and keep it as `last` (None if a newer request made this one stale first)."""
        request.check()
        with self._lock:
            stale = (lambda: ticket != self._latest) if ticket is not None else (lambda: False)
            if stale():
                return None
            shot = self._draw(request, on_step, stale)
            if shot is not None:
                self.last = shot
            return shot

    def _draw(self, request: Request, on_step: OnStep | None, stop: Callable[[], bool]) -> Shot | None:
        """One image at the request's mix (the caller holds the lock)."""
        from .generation import generate_image

        self._apply(request)
        start = time.perf_counter()
        image = generate_image(self.pipe, request, on_step=on_step, stop=stop)
        seconds = time.perf_counter() - start
        if image is None:
            return None
        self.seconds[request.fused] = seconds
        self._count += 1
        return Shot(request, image, seconds, self._count)

    def grid(self, request: Request, x: tuple[str, list[float]], y: tuple[str, list[float]] | None = None,
             on_step: OnStep | None = None) -> Any:
        """One labelled sheet (`vislora generate --grid`'s layout): the request with adapter x (and y) switched
        on at each listed strength, every cell from the same seed. The shown image (`last`) stays as it was."""
        from ..diffusion.generate import contact_sheet

        axes = [x] + ([y] if y else [])
        for key, values in axes:
            if key not in self.names:
                raise StudioInputError(f"grid: {key!r} is not a usable adapter of the folder")
            if not 1 <= len(values) <= 8:
                raise StudioInputError(f"grid: give 1 to 8 strengths for {key}, got {len(values)}")
        if y and y[0] == x[0]:
            raise StudioInputError("grid: the two axes must sweep different adapters")
        rows = []
        for vy in (y[1] if y else [None]):
            row = []
            for vx in x[1]:
                mixes = dict(request.mixes)
                mixes[x[0]] = replace(mixes.get(x[0], Mix()), on=True, strength=vx)
                if y:
                    mixes[y[0]] = replace(mixes.get(y[0], Mix()), on=True, strength=vy)
                cell = replace(request, mixes=mixes)
                cell.check()
                row.append(cell)
            rows.append(row)
        with self._lock:
            cells = [[self._draw(cell, on_step, lambda: False).image for cell in row] for row in rows]
        cols = [f"{self.names[x[0]]}={v:g}" for v in x[1]]
        labels = [f"{self.names[y[0]]}={v:g}" for v in y[1]] if y else [""]
        return contact_sheet(cells, cols, labels)

    def merged(self, request: Request) -> Path | None:
        """The request's mix written as one adapter file under the outputs (None when nothing is on)."""
        from .merging import write_merged

        active = request.active()
        if not active:
            return None
        paths = {key: self.folder.resolve(key) for key in active}
        return write_merged(paths, active, self.outputs.new("mix", ".safetensors"))

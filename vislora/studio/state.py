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
from .mix import Mix, Request, StudioInputError
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
                 live_seconds: float = LIVE_SECONDS) -> None:
        from .. import AdapterBank
        from .generation import load_pipeline

        self.model_dir = str(model_dir)
        self.live_seconds = live_seconds  # previews follow the sliders while an image takes less than this
        self.folder = AdapterFolder(adapters_dir)
        self.outputs = OutputFolder(out_dir)
        self.pipe = load_pipeline(self.model_dir)
        self.bank = AdapterBank(self.pipe)
        self.facts: dict[str, AdapterFacts] = {}
        self.names: dict[str, str] = {}  # file key -> bank name
        self._lock = threading.Lock()
        self._latest = 0
        self.seconds: dict[bool, float] = {}  # fused? -> last measured seconds per image
        self.last: Shot | None = None
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
        specs = {}
        for key, name in self.names.items():
            mix = request.mixes.get(key, Mix())
            specs[name] = mix.spec(list(self.bank.layer_strengths(name)))
        return specs

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
        """Make one image (None if a newer request made this one stale before it finished)."""
        from .generation import generate_image

        request.check()
        with self._lock:
            if ticket is not None and ticket != self._latest:
                return None
            self._apply(request)
            stale = (lambda: ticket != self._latest) if ticket is not None else (lambda: False)
            start = time.perf_counter()
            image = generate_image(self.pipe, request, on_step=on_step, stop=stale)
            seconds = time.perf_counter() - start
            if image is None:
                return None
            self.seconds[request.fused] = seconds
            self.last = Shot(request, image, seconds, self.last.number + 1 if self.last else 1)
            return self.last

    def grid(self, request: Request, x: tuple[str, list[float]], y: tuple[str, list[float]] | None = None,
             on_step: OnStep | None = None) -> Any:
        """One labelled sheet: the request with adapter x (and y) switched on at each listed strength."""
        from .sheet import labelled_sheet

        axes = [x] + ([y] if y else [])
        for key, values in axes:
            if key not in self.names:
                raise StudioInputError(f"grid: {key!r} is not a usable adapter of the folder")
            if not values or len(values) > 8:
                raise StudioInputError(f"grid: give 1 to 8 strengths for {key}, got {len(values)}")
        request.check()
        ys = y[1] if y else [None]
        cells = []
        for vy in ys:
            row = []
            for vx in x[1]:
                mixes = dict(request.mixes)
                mixes[x[0]] = replace(mixes.get(x[0], Mix()), on=True, strength=vx)
                if y:
                    mixes[y[0]] = replace(mixes.get(y[0], Mix()), on=True, strength=vy)
                shot = self.render(replace(request, mixes=mixes), on_step=on_step)
                row.append(shot.image)
            cells.append(row)
        col_labels = [f"{x[0]}: {v:g}" for v in x[1]]
        row_labels = [f"{y[0]}: {v:g}" for v in ys] if y else None
        return labelled_sheet(cells, col_labels, row_labels)

    def merged(self, request: Request) -> Path | None:
        """The request's mix written as one adapter file under the outputs (None when nothing is on)."""
        from .merging import write_merged

        active = request.active()
        if not active:
            return None
        paths = {key: self.folder.resolve(key) for key in active}
        return write_merged(paths, active, self.outputs.new("mix", ".safetensors"))

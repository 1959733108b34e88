"""The page's event handlers. Each turns a bad value into a message on the page and leaves the state as it was."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import VisloraError
from . import export
from .mix import Mix, Request, StudioInputError, finite
from .state import Studio

ERRORS = (VisloraError, ValueError, TypeError)
MIX_FIELDS = [f.name for f in fields(Mix)]  # on, strength, sections..., lbw: the order of each row's inputs
SAMPLER_FIELDS = ("prompt", "negative", "seed", "steps", "guidance", "width", "height", "fused")


def _request(studio: Studio, values: tuple) -> Request:
    """The flat input values (sampler fields, then MIX_FIELDS per usable adapter) -> a Request."""
    head = dict(zip(SAMPLER_FIELDS, values[:len(SAMPLER_FIELDS)]))
    rest = values[len(SAMPLER_FIELDS):]
    mixes = {}
    for i, key in enumerate(k for k, f in studio.facts.items() if f.usable):  # the page's rows, in order
        row = dict(zip(MIX_FIELDS, rest[i * len(MIX_FIELDS):(i + 1) * len(MIX_FIELDS)]))
        row["on"] = bool(row["on"])
        row["lbw"] = row["lbw"] or ""
        mixes[key] = Mix(**row)
    for k in ("seed", "steps", "width", "height"):
        value = head[k]
        head[k] = int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value
    head["negative"] = head["negative"] or ""
    head["fused"] = bool(head["fused"])
    return Request(**head, mixes=mixes)


def timing_line(studio: Studio) -> str:
    parts = [f"{'fused' if fused else 'unfused'}: {s:.3f} s/image" for fused, s in sorted(studio.seconds.items())]
    return "time per image (last measured): " + (", ".join(parts) if parts else "none yet")


def _error(e: Exception) -> str:
    return f"**error:** {e}"


def _strengths(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise StudioInputError(f"grid: {what} strengths are comma-separated numbers, got {text!r}") from None
    return [finite(v, f"grid: a {what} strength") for v in values]


class Handlers:
    def __init__(self, studio: Studio, gr: Any) -> None:
        self.studio, self.gr = studio, gr

    def bump(self) -> None:
        self.studio.bump()

    def _render(self, values: tuple, progress: Any) -> tuple:
        gr = self.gr
        try:
            request = _request(self.studio, values)
            ticket = self.studio.bump()
            shot = self.studio.render(request, on_step=lambda i, n: progress((i, n), desc="denoising"),
                                      ticket=ticket)
        except ERRORS as e:
            return gr.skip(), _error(e), timing_line(self.studio)
        if shot is None:  # a newer request made this one stale; its own result will come
            return gr.skip(), gr.skip(), gr.skip()
        mode = "fused" if shot.request.fused else "unfused"
        return shot.image, f"image {shot.number}: done in {shot.seconds:.3f} s ({mode})", timing_line(self.studio)

    def generate(self, *values: Any, progress: Any = None) -> tuple:
        return self._render(values, progress or self.gr.Progress())

    def preview(self, live: bool, *values: Any, progress: Any = None) -> tuple:
        """The image again after a control moved, when live preview is on and the last image, scaled to this
        request's step count, took under the studio's live_seconds."""
        gr = self.gr
        if not live:
            return gr.skip(), gr.skip(), gr.skip()
        last = self.studio.last
        steps = values[SAMPLER_FIELDS.index("steps")]
        if last is not None and isinstance(steps, (int, float)) and steps > 0:
            estimate = last.seconds * float(steps) / last.request.steps
            if estimate >= self.studio.live_seconds:
                return gr.skip(), (f"live preview is paused: an image would take about {estimate:.2f} s; "
                                   "press Generate"), gr.skip()
        return self._render(values, progress or gr.Progress())

    def grid(self, x: str, x_values: str, y: str, y_values: str, *values: Any, progress: Any = None) -> tuple:
        gr = self.gr
        progress = progress or gr.Progress()
        try:
            request = _request(self.studio, values)
            xs = (x, _strengths(x_values, "x"))
            ys = (y, _strengths(y_values, "y")) if y else None
            sheet = self.studio.grid(request, xs, ys, on_step=lambda i, n: progress((i, n), desc="grid cell"))
        except ERRORS as e:
            return gr.skip(), _error(e)
        return sheet, f"grid: {len(xs[1])} x {len(ys[1]) if ys else 1} images"

    def export(self) -> tuple:
        gr = self.gr
        studio = self.studio
        shot = studio.last
        if shot is None:
            return gr.skip(), gr.skip(), gr.skip(), "**error:** nothing to export yet; press Generate first"
        request, source, folder = shot.request, studio.source, studio.folder.given
        order, names = list(studio.facts), studio.names
        specs = {names[k]: studio.spec(k, m) for k, m in request.active().items()}
        adapters = export.lora_args(request, folder, order, names)
        png = export.save_png(shot.image, studio.outputs.new("image", ".png"), request, source, adapters,
                              type(studio.pipe.scheduler).__name__, specs)
        files, note = [str(png)], "PNG with the settings in its text chunks"
        try:
            merged = studio.merged(request)
        except ERRORS as e:
            note += f"; merged adapter: {e}"
        else:
            if merged is not None:
                files.append(str(merged))
                note += f"; the mix as one adapter file: {merged.name}"
        return (export.command(request, source, folder, order, names),
                export.snippet(request, source, folder, order, names, specs), files, note)

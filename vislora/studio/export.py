"""What reproduces the page's image elsewhere: the exact `vislora generate` command, a Python snippet, and
a PNG with `vislora generate`'s text chunks (A1111's `parameters` line and the settings as JSON).

Adapters are listed in the bank's order (file-name order, as the studio loads them), so the command stacks
them in the same order and sums the same terms; only adapters that change the image appear.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..diffusion import generate as cli
from .generation import settings
from .mix import Request

SECTION_NOTE = "# per-section strengths of {} are set in the Python snippet (--lora takes one number)"
FUSED_NOTE = "# drawn fused on the page; the command draws unfused (equal within 2/255 per pixel)"


def lora_args(request: Request, folder: Path, order: list[str], names: dict[str, str]) -> list[cli.LoraArg]:
    """`--lora` entries for the adapters that change the image, in the bank's order."""
    active = request.active()
    return [cli.LoraArg(names[key], str(folder / key), active[key].strength) for key in order if key in active]


def command(request: Request, source: cli.Source, folder: Path, order: list[str], names: dict[str, str],
            out: str = "out.png") -> str:
    """The shell command that draws the same image."""
    words = ["vislora", "generate", *source.flags()]
    for a in lora_args(request, folder, order, names):
        words += ["--lora", f"{a.path}:{a.strength:g}"]
    words += ["--prompt", request.prompt]
    if request.negative:
        words += ["--negative-prompt", request.negative]
    words += ["--seed", str(request.seed), "--steps", str(request.steps), "--guidance", f"{request.guidance:g}",
              "--width", str(request.width), "--height", str(request.height), "--out", out]
    lines = [" ".join(shlex.quote(w) for w in words)]
    advanced = [k for k, m in request.active().items() if not m.simple]
    if advanced:
        lines.append(SECTION_NOTE.format(", ".join(advanced)))
    if request.fused:
        lines.append(FUSED_NOTE)
    return "\n".join(lines)


def _keywords(source: cli.Source) -> str:
    """`, config=..., revision=...` for pipeline_on, where the source has them."""
    return "".join(f", {k}={v!r}" for k, v in (("config", source.config), ("revision", source.revision)) if v)


def snippet(request: Request, source: cli.Source, folder: Path, order: list[str], names: dict[str, str],
            specs: dict[str, Any]) -> str:
    """Python that draws the same image with the library; `specs` are the bank's strength specs by name."""
    s = settings(request, source, lora_args(request, folder, order, names))
    lines = ["import torch", "", "import vislora",
             "from vislora.diffusion.generate import LoraArg, Settings, pipeline_on, png_info, run", "",
             f"pipe = pipeline_on({source.model!r}, 'cpu', torch.float32{_keywords(source)})",
             "bank = vislora.AdapterBank(pipe)"]
    lines += [f"bank.load({a.name!r}, {a.path!r}, strength={specs[a.name]!r})" for a in s.adapters]
    if request.fused:
        lines.append("bank.fuse()")
    lines += [f"s = {s!r}", "(image,) = run(pipe, s, 1, 'denoising')",
              "image.save('out.png', pnginfo=png_info(s, type(pipe.scheduler).__name__))"]
    return "\n".join(lines)


def save_png(image: Any, path: Path, request: Request, source: cli.Source, adapters: list[cli.LoraArg],
             sampler: str, specs: dict[str, Any]) -> Path:
    """The image with `vislora generate`'s text chunks, plus the per-adapter specs and the fused switch."""
    s = settings(request, source, adapters)
    image.save(path, format="PNG", pnginfo=cli.png_info(s, sampler, {"strength_specs": specs,
                                                                      "fused": request.fused}))
    return path

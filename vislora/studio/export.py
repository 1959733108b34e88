"""What reproduces the page's image elsewhere: the exact `vislora generate` command, a Python snippet, and
a PNG whose text chunk holds the settings.

Adapters are listed in the bank's order (file-name order, as the studio loads them), so the command stacks
them in the same order and sums the same terms; only adapters that change the image appear.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from .mix import Request

PNG_KEY = "vislora"  # text chunk with the settings as JSON
PARAMETERS_KEY = "parameters"  # A1111's key: the prompt line plus settings, which image viewers show


def _lora_args(request: Request, folder: Path, order: list[str]) -> list[tuple[Path, Any]]:
    active = request.active()
    return [(folder / key, active[key]) for key in order if key in active]


def settings(request: Request, model: str, folder: Path, order: list[str]) -> dict[str, Any]:
    """The request as plain data: what the PNG records."""
    loras = []
    for path, mix in _lora_args(request, folder, order):
        entry = {"file": str(path), "strength": mix.strength}
        if not mix.simple:
            entry.update({k: getattr(mix, k) for k in ("unet", "text_encoder", "down", "mid", "up", "lbw")})
        loras.append(entry)
    return {"model": model, "prompt": request.prompt, "negative_prompt": request.negative, "seed": request.seed,
            "steps": request.steps, "guidance": request.guidance, "width": request.width, "height": request.height,
            "fused": request.fused, "loras": loras}


def command(request: Request, model: str, folder: Path, order: list[str], out: str = "out.png") -> str:
    """The shell command that draws the same image."""
    words = ["vislora", "generate", "--model", model]
    for path, mix in _lora_args(request, folder, order):
        words += ["--lora", f"{path}:{mix.strength:g}"]
    words += ["--prompt", request.prompt]
    if request.negative:
        words += ["--negative-prompt", request.negative]
    words += ["--seed", str(request.seed), "--steps", str(request.steps), "--guidance", f"{request.guidance:g}",
              "--width", str(request.width), "--height", str(request.height)]
    if request.fused:
        words.append("--fuse")
    words += ["--out", out]
    text = " ".join(shlex.quote(w) for w in words)
    advanced = [p.name for p, m in _lora_args(request, folder, order) if not m.simple]
    if advanced:
        text += f"\n# per-section strengths of {', '.join(advanced)} are in the Python snippet"
    return text


def snippet(request: Request, model: str, folder: Path, order: list[str], names: dict[str, str]) -> str:
    """Python that draws the same image with the library."""
    lines = ["import vislora", "from vislora.studio.generation import generate_image, load_pipeline",
             "from vislora.studio.mix import Request", "", f"pipe = load_pipeline({model!r})",
             "bank = vislora.AdapterBank(pipe)"]
    for path, mix in _lora_args(request, folder, order):
        key = path.name
        spec = mix.spec(["unet.down_blocks.", "unet.mid_block.", "unet.up_blocks.", "text_encoder."])
        lines.append(f"bank.load({names[key]!r}, {str(path)!r}, strength={spec!r})")
    if request.fused:
        lines.append("bank.fuse()")
    lines += [f"request = Request(prompt={request.prompt!r}, negative={request.negative!r}, seed={request.seed}, "
              f"steps={request.steps}, guidance={request.guidance!r}, width={request.width}, "
              f"height={request.height})",
              "image = generate_image(pipe, request)", "image.save('out.png')"]
    return "\n".join(lines)


def png_info(data: dict[str, Any]) -> Any:
    """PNG text chunks: the JSON settings, and A1111's `parameters` line with the lora tags in the prompt."""
    from PIL.PngImagePlugin import PngInfo

    tags = "".join(f" <lora:{Path(lo['file']).stem}:{lo['strength']:g}>" for lo in data["loras"])
    line = (f"{data['prompt']}{tags}\nNegative prompt: {data['negative_prompt']}\nSteps: {data['steps']}, "
            f"CFG scale: {data['guidance']:g}, Seed: {data['seed']}, Size: {data['width']}x{data['height']}")
    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(data))
    info.add_text(PARAMETERS_KEY, line)
    return info


def save_png(image: Any, path: Path, data: dict[str, Any]) -> Path:
    image.save(path, format="PNG", pnginfo=png_info(data))
    return path

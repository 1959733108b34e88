"""`vislora generate`: images from a diffusion pipeline with adapters mixed by strength, or an X/Y grid of mixes.

    vislora generate --model samples/digits_sd --lora bold.safetensors:0.7 --lora italic.safetensors:0.3 \\
        --prompt "a handwritten digit seven" --seed 0 --steps 20 --guidance 5 --n 8 --out out.png
    vislora generate ... --grid bold=0,0.5,1 italic=0,0.5,1 --out grid.png

The PNG keeps the settings in its text chunks, as A1111 does: `parameters` in A1111's layout (prompt with
<lora:name:strength> tags, then "Steps: ..., Seed: ..."), and `vislora` as JSON with every setting.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import checks
from ..bank import AdapterBank
from ..console import guarded
from ..helpformat import HelpFormatter
from ..strengths import check_strength
from .bases import add_source_options, add_threads_option, load_sampler

_GENERIC_STEMS = {"adapter", "adapter_model", "pytorch_lora_weights", "lora"}
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass
class LoraArg:
    name: str
    path: str
    strength: float


@dataclass
class Settings:
    """What a user needs to make the same image again."""

    model: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    n: int
    height: int | None
    width: int | None
    adapters: list[LoraArg] = field(default_factory=list)
    grid: list[tuple[str, list[float]]] = field(default_factory=list)
    model_config: str | None = None  # the configs of a single-file --model
    revision: str | None = None  # a hub id's commit (the one --revision, or main, resolved to)


def parse_lora(text: str) -> LoraArg:
    """`FILE`, `FILE:STRENGTH` or `NAME=FILE[:STRENGTH]` -> LoraArg. The name defaults to the file's stem
    (its folder's name for generic stems such as adapter.safetensors)."""
    name, _, rest = text.partition("=") if "=" in text.split(":")[0] else ("", "", text)
    path, strength = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and not re.fullmatch(r"[\\/].*", tail):  # a trailing ":x" is a strength (not a Windows drive path)
        try:
            strength = float(tail)
        except ValueError:
            raise ValueError(f"--lora {text!r}: the strength after ':' must be a number, got {tail!r}") from None
        check_strength(strength, f"--lora {text!r}")
        path = head
    if not path:
        raise ValueError(f"--lora {text!r}: no file given; write --lora FILE[:STRENGTH]")
    if not Path(path).exists():
        raise ValueError(f"--lora {text!r}: no such file {path!r}")
    if not name:
        p = Path(path)
        name = p.parent.name if p.stem in _GENERIC_STEMS and p.parent.name else p.stem
    return LoraArg(_NAME_CHARS.sub("_", name), path, strength)


def parse_grid(items: list[str], names: list[str]) -> list[tuple[str, list[float]]]:
    """["bold=0,0.5,1", "italic=0,1"] -> [("bold", [0, 0.5, 1]), ("italic", [0, 1])]: one or two axes."""
    if not 1 <= len(items) <= 2:
        raise ValueError(f"--grid takes one or two axes (NAME=v1,v2,...), got {len(items)}")
    axes = []
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--grid {item!r}: write NAME=v1,v2,... with NAME one of the --lora adapters {names}")
        try:
            axes.append((name, [float(v) for v in values.split(",")]))
        except ValueError:
            raise ValueError(f"--grid {item!r}: the strengths must be numbers") from None
    if len(axes) == 2 and axes[0][0] == axes[1][0]:
        raise ValueError("--grid: the two axes must sweep different adapters")
    return axes


@dataclass(frozen=True)
class Source:
    """Where a pipeline comes from, as the flags that load it: --model, --model-config, --revision."""

    model: str
    config: str | None = None
    revision: str | None = None

    def flags(self) -> list[str]:
        return (["--model", self.model] + (["--model-config", self.config] if self.config else [])
                + (["--revision", self.revision] if self.revision else []))


def source_pipeline(source: Source, device: str, dtype: torch.dtype) -> tuple[Any, Source]:
    """The pipeline of vislora.diffusion.bases.load_sampler (a diffusers folder, a hub id, or one .safetensors
    file with its configs; pickles refused with UnsafeFormatError; UNet pipelines, Flux.1, Flux.2 and SD3)
    moved to `device` in `dtype`, ready to sample, and its source pinned: a hub id's revision becomes the commit
    it resolved to, so the settings written with an image load the same weights later, whatever the branch has
    become."""
    pipe, record = load_sampler(source.model, config=source.config, revision=source.revision)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # it blacks out images of digits as readily as anything else
    pipe.to(device)
    # load_pipeline gives fp32; casting to fp32 again only makes diffusers warn about it.
    pipe = pipe.to(dtype=dtype) if dtype != torch.float32 else pipe
    return pipe, replace(source, revision=record.get("commit") or source.revision)


def pipeline_on(model: str, device: str, dtype: torch.dtype, config: str | None = None,
                revision: str | None = None) -> Any:
    """source_pipeline's pipeline, for `model` (with its `config`, at `revision`)."""
    return source_pipeline(Source(model, config, revision), device, dtype)[0]


def run(pipe, s: Settings, n: int, desc: str, on_step_end: Any = None):
    """n images at the pipeline's current adapter strengths, all from seed s.seed.

    on_step_end: diffusers' callback_on_step_end (pipe, step, timestep, kwargs) -> kwargs, for callers that
    show progress or stop early (the studio); it does not change the image.
    """
    pipe.set_progress_bar_config(desc=desc, leave=False, disable=None)  # tqdm hides itself off a terminal
    generator = torch.Generator(pipe.device).manual_seed(s.seed)
    # prompt= by name: Flux.2's pipelines take an input image first
    return pipe(prompt=s.prompt, **negative_prompt(pipe, s.negative_prompt), num_inference_steps=s.steps,
                guidance_scale=s.guidance, num_images_per_prompt=n, generator=generator, height=s.height,
                width=s.width, callback_on_step_end=on_step_end).images


# Pipelines that draw without a negative prompt, and why: a negative prompt given to them is refused, not ignored.
NO_NEGATIVE = {
    "FluxPipeline": "Flux.1's guidance is distilled into the model; it draws without a negative prompt",
    "Flux2Pipeline": "Flux.2 takes no negative prompt",
    "Flux2KleinPipeline": "klein's guidance contrasts the prompt with an empty one; it takes no negative prompt",
}


def negative_prompt(pipe: Any, text: str) -> dict[str, Any]:
    """The pipeline call's negative-prompt argument: none where the pipeline has no use for one (Flux; a
    ValueError if `text` is given), else `negative_prompt` (None for an empty text)."""
    reason = NO_NEGATIVE.get(type(pipe).__name__)
    if reason is None and "negative_prompt" not in inspect.signature(pipe.__call__).parameters:
        reason = f"{type(pipe).__name__} takes no negative prompt"
    if reason is None:
        return {"negative_prompt": text or None}
    if text:
        raise ValueError(f"--negative-prompt: {reason}; leave it out")
    return {}


def default_size(pipe: Any) -> int:
    """The image side a pipeline draws by default: its denoiser's sample size times the VAE's scale (a UNet's
    config; a transformer pipeline's default_sample_size: Flux 128 latents, SD3 its transformer's)."""
    unet = getattr(pipe, "unet", None)
    latent = unet.config.sample_size if unet is not None else pipe.default_sample_size
    return int(latent) * getattr(pipe, "vae_scale_factor", 8)


def contact_sheet(cells: list[list[Any]], col_labels: list[str], row_labels: list[str]):
    """Images in rows and columns with labels above and to the left (like A1111's X/Y plot); images narrower
    than the column labels are enlarged by a whole factor (nearest neighbour)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 4
    w, h = cells[0][0].size
    widest = max((int(measure.textlength(t, font=font)) for t in col_labels), default=0)
    zoom = max(1, math.ceil((widest + pad) / w))  # small images (the digits' 32 px) grow until labels fit
    if zoom > 1:
        cells = [[image.resize((w * zoom, h * zoom), Image.NEAREST) for image in row] for row in cells]
        w, h = w * zoom, h * zoom
    label_h = 14 if any(col_labels) else 0
    label_w = max((int(measure.textlength(t, font=font)) for t in row_labels), default=0) + (
        2 * pad if any(row_labels) else 0)
    rows, cols = len(cells), len(cells[0])
    sheet = Image.new("RGB", (label_w + cols * (w + pad) + pad, label_h + rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(col_labels):
        draw.text((label_w + pad + c * (w + pad), 1), text, fill="black", font=font)
    for r, row in enumerate(cells):
        y = label_h + pad + r * (h + pad)
        if row_labels[r]:
            draw.text((pad, y + h // 2 - 6), row_labels[r], fill="black", font=font)
        for c, image in enumerate(row):
            sheet.paste(image, (label_w + pad + c * (w + pad), y))
    return sheet


def png_info(s: Settings, sampler: str, extra: dict[str, Any] | None = None):
    """Text chunks: A1111's `parameters` line and the full settings as JSON under `vislora`."""
    from PIL.PngImagePlugin import PngInfo

    tags = " ".join(f"<lora:{a.name}:{a.strength:g}>" for a in s.adapters)
    size = f", Size: {s.width}x{s.height}" if s.width and s.height else ""
    text = (f"{s.prompt}{' ' + tags if tags else ''}\n"
            + (f"Negative prompt: {s.negative_prompt}\n" if s.negative_prompt else "")
            + f"Steps: {s.steps}, Sampler: {sampler}, CFG scale: {s.guidance:g}, Seed: {s.seed}{size}, "
            f"Model: {Path(s.model).name}")
    info = PngInfo()
    info.add_text("parameters", text)
    info.add_text("vislora", json.dumps({**asdict(s), **(extra or {})}))
    return info


def prepare(pipe, s: Settings) -> AdapterBank:
    """The pipeline's bank with s.adapters loaded at their strengths; fills in the image size (for the PNG)."""
    s.height = s.height or default_size(pipe)
    s.width = s.width or default_size(pipe)
    bank = AdapterBank(pipe)
    for a in s.adapters:
        bank.load(a.name, a.path, strength=a.strength)
    return bank


def generate(pipe, s: Settings):
    """The image to save: n samples tiled, or the grid of strength mixes (one sample per cell, same seed)."""
    bank = prepare(pipe, s)
    if not s.grid:
        images = run(pipe, s, s.n, "denoising")
        cols = math.ceil(math.sqrt(len(images)))
        rows = [images[i : i + cols] for i in range(0, len(images), cols)]
        blank = images[0].copy()
        blank.paste((255, 255, 255), (0, 0, *blank.size))
        rows[-1] += [blank] * (cols - len(rows[-1]))
        return contact_sheet(rows, [""] * cols, [""] * len(rows)) if len(images) > 1 else images[0]
    cells, cols, rows = sweep(pipe, bank, s, 1)
    return contact_sheet([[images[0] for images in row] for row in cells], cols, rows)


def sweep(pipe, bank: AdapterBank, s: Settings, n: int) -> tuple[list[list[list[Any]]], list[str], list[str]]:
    """n images per cell of the strength grid s.grid (every cell from seed s.seed), and the axis labels."""
    (x_name, xs), (y_name, ys) = s.grid[0], (s.grid[1] if len(s.grid) > 1 else (None, [None]))
    cells, total = [], len(xs) * len(ys)
    for r, y in enumerate(ys):
        row = []
        for c, x in enumerate(xs):
            bank.set_strengths({x_name: x} | ({y_name: y} if y_name else {}))
            row.append(run(pipe, s, n, f"cell {r * len(xs) + c + 1}/{total}"))
        cells.append(row)
    return cells, [f"{x_name}={x:g}" for x in xs], [f"{y_name}={y:g}" if y_name else "" for y in ys]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = checks.Parser(prog="vislora generate", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="a diffusers pipeline folder, a hub id, or one .safetensors checkpoint (A1111/ComfyUI layout)")
    add_source_options(p)
    p.add_argument("--lora", action="append", default=[], metavar="[NAME=]FILE[:STRENGTH]",
                   help="an adapter file and its strength (1 if left out); repeat to mix")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--n", type=int, default=1, help="images to draw (tiled into one PNG); a grid draws one per cell")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--grid", nargs="+", metavar="NAME=v1,v2,...", help="sweep one or two adapters' strengths")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--out", required=True, help="the PNG to write")
    add_threads_option(p)
    return p.parse_args(argv)


# Every flag's constraint, checked in one step before the pipeline loads (vislora.checks).
RULES = {
    "seed": checks.count(0), "steps": checks.count(1), "guidance": checks.number(0, example="5"),
    "n": checks.count(1), "height": checks.count(8), "width": checks.count(8), "device": checks.device_present(),
    "out": checks.new_file((".png",)),
}


def main(argv: list[str] | None = None) -> int:
    """Draw; every refusal or failure is one line on stderr (vislora.console.guarded), usage errors exit 2."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: draw(args))


def draw(args: argparse.Namespace) -> int:
    checks.check(args, RULES)  # every flag, before the pipeline loads
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        adapters = [parse_lora(t) for t in args.lora]
        if len({a.name for a in adapters}) != len(adapters):
            raise ValueError(f"--lora: two adapters share a name {[a.name for a in adapters]}; write NAME=FILE")
        grid = parse_grid(args.grid, [a.name for a in adapters]) if args.grid else []
        pipe, source = source_pipeline(Source(args.model, args.model_config, args.revision), args.device,
                                       getattr(torch, args.dtype))
        s = Settings(source.model, args.prompt, args.negative_prompt, args.seed, args.steps, args.guidance, args.n,
                     args.height, args.width, adapters, grid, source.config, source.revision)
        image = generate(pipe, s)
    except ValueError as e:  # ours (--lora, --grid) and the pipeline's (a size it cannot draw)
        raise checks.UsageError(str(e)) from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, pnginfo=png_info(s, type(pipe.scheduler).__name__))
    print(f"wrote {out} ({image.size[0]}x{image.size[1]})")
    return 0

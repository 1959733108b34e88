"""The tour's last stop: the bold and italic style adapters mixed at 0 / 0.5 / 1 on the digits diffusion base.

    python samples/demo_blend.py                       # the adapters the style demo trained (runs/demo/style/...)
    python samples/demo_blend.py --bold B.safetensors --italic I.safetensors --out runs/demo/blend

Writes a labelled 3x3 contact sheet (each cell: the digits two, four, seven and eight, one seed per digit, the
same in every cell) and prints each cell's measured stroke width (pixels) and slant (degrees), averaged over
those drawings: bold moves the first, italic the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vislora.diffusion.generate import LoraArg, Settings, contact_sheet, pipeline_on, png_info, prepare, sweep  # noqa: E402

STYLE_RUNS = Path("runs/demo/style")


def blend_grid(bold: str | Path, italic: str | Path, *, model: str | Path = HERE / "digits_sd",
               digits: tuple[int, ...] = (2, 4, 7, 8), seed: int = 0, steps: int = 20, guidance: float = 5.0,
               values: tuple[float, ...] = (0.0, 0.5, 1.0), zoom: int = 3, out: str | Path = "runs/demo/blend",
               device: str = "cpu") -> dict[tuple[float, float], tuple[float, float]]:
    """Mix the two adapters over values x values; returns {(bold, italic): (stroke width, slant)} over one
    drawing of each of `digits` per cell, and writes OUT/grid.png: each cell tiles those drawings (one seed
    per digit, the same in every cell), enlarged `zoom` times (nearest neighbour, so no blur is added)."""
    import torch
    from PIL import Image

    from digit_styles import slant, stroke_width
    from digits import DIGIT_WORDS
    from vislora.train.plots import tile

    pipe = pipeline_on(str(model), device, torch.float32)
    adapters = [LoraArg("bold", str(bold), 1.0), LoraArg("italic", str(italic), 1.0)]
    grid = [("bold", list(values)), ("italic", list(values))]
    s = Settings(str(model), "", "", seed, steps, guidance, 1, None, None, adapters, grid)
    bank = prepare(pipe, s)
    drawn = []  # per digit: cells[italic][bold], one image each
    for k, digit in enumerate(digits):
        s.prompt, s.seed = f"a handwritten digit {DIGIT_WORDS[digit]}", seed + k
        cells, cols, rows = sweep(pipe, bank, s, 1)
        drawn.append(cells)
    cell = {(b, i): [d[r][c][0] for d in drawn] for r, i in enumerate(values) for c, b in enumerate(values)}
    measures = {key: (float(np.mean(stroke_width(images))), float(np.mean(slant(images))))
                for key, images in cell.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = 2 if len(digits) == 4 else len(digits)

    def enlarged(images):
        t = tile(images, columns=columns)
        return t.resize((t.width * zoom, t.height * zoom), Image.NEAREST)

    sheet = contact_sheet([[enlarged(cell[b, i]) for b in values] for i in values], cols, rows)
    sheet.save(out / "grid.png", pnginfo=png_info(s, type(pipe.scheduler).__name__))
    words = ", ".join(DIGIT_WORDS[d] for d in digits)
    print(f"bold x italic mixes, one drawing each of {words} per cell: stroke width (px) / slant (deg)")
    print("            " + "".join(f"  bold={b:<4g}       " for b in values))
    for i in values:
        print(f"italic={i:<4g} " + "".join(f"  {measures[b, i][0]:5.2f} / {measures[b, i][1]:+5.1f}  "
                                          for b in values))
    print(f"grid: {out / 'grid.png'}")
    return measures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bold", default=STYLE_RUNS / "bold" / "adapter.safetensors")
    p.add_argument("--italic", default=STYLE_RUNS / "italic" / "adapter.safetensors")
    p.add_argument("--model", default=HERE / "digits_sd")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="runs/demo/blend")
    args = p.parse_args(argv)
    for f in (args.bold, args.italic):
        if not Path(f).is_file():
            print(f"error: {f}: no such adapter file; train the style adapters first (make demo)", file=sys.stderr)
            return 2
    blend_grid(args.bold, args.italic, model=args.model, steps=args.steps, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

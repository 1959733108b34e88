"""The tour's last stop: the bold and italic style adapters mixed at 0 / 0.5 / 1 on the digits diffusion base.

    python samples/demo_blend.py                       # the adapters the style demo trained (runs/demo/style/...)
    python samples/demo_blend.py --bold B.safetensors --italic I.safetensors --out runs/demo/blend

Writes a labelled 3x3 contact sheet (one seed for every cell) and prints each cell's measured stroke width
(pixels) and slant (degrees), averaged over a few samples: bold moves the first, italic the second.
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
               prompt: str = "a handwritten digit seven", seed: int = 0, steps: int = 20, guidance: float = 5.0,
               values: tuple[float, ...] = (0.0, 0.5, 1.0), samples: int = 4, out: str | Path = "runs/demo/blend",
               device: str = "cpu") -> dict[tuple[float, float], tuple[float, float]]:
    """Mix the two adapters over values x values; returns {(bold, italic): (stroke width, slant)} and writes
    OUT/grid.png (first sample of each cell; its text chunks record the settings)."""
    import torch

    from digit_styles import slant, stroke_width

    pipe = pipeline_on(str(model), device, torch.float32)
    adapters = [LoraArg("bold", str(bold), 1.0), LoraArg("italic", str(italic), 1.0)]
    s = Settings(str(model), prompt, "", seed, steps, guidance, samples, None, None, adapters,
                 [("bold", list(values)), ("italic", list(values))])
    bank = prepare(pipe, s)
    cells, cols, rows = sweep(pipe, bank, s, samples)  # cells[italic][bold]: `samples` images each
    measures = {(b, i): (float(np.mean(stroke_width(cells[r][c]))), float(np.mean(slant(cells[r][c]))))
                for r, i in enumerate(values) for c, b in enumerate(values)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet([[images[0] for images in row] for row in cells], cols, rows)
    sheet.save(out / "grid.png", pnginfo=png_info(s, type(pipe.scheduler).__name__))
    print(f"bold x italic mixes, {samples} samples per cell, seed {seed}: stroke width (px) / slant (deg)")
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
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--out", default="runs/demo/blend")
    args = p.parse_args(argv)
    for f in (args.bold, args.italic):
        if not Path(f).is_file():
            print(f"error: {f}: no such adapter file; train the style adapters first (make demo)", file=sys.stderr)
            return 2
    blend_grid(args.bold, args.italic, model=args.model, steps=args.steps, samples=args.samples, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

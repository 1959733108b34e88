"""A labelled sheet of images: column labels on top, row labels on the left, one cell per image."""

from __future__ import annotations

from typing import Any

CELL_MIN = 96  # px: tiny bases draw 32 px images; the sheet enlarges them (nearest) so labels stay legible


def labelled_sheet(cells: list[list[Any]], col_labels: list[str], row_labels: list[str] | None = None) -> Any:
    """cells[row][col] PIL images of one size -> one RGB image with the labels drawn in black on white."""
    from PIL import Image, ImageDraw

    w, h = cells[0][0].size
    k = max(1, -(-CELL_MIN // max(w, h)))  # whole-number enlargement
    cw, ch = w * k, h * k
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(draw_probe.textlength(s))  # noqa: E731
    left = max((text_w(s) for s in row_labels), default=0) + 12 if row_labels else 0
    top = 20
    col_w = max(cw, max(text_w(s) for s in col_labels) + 8)
    sheet = Image.new("RGB", (left + col_w * len(col_labels), top + ch * len(cells)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(col_labels):
        draw.text((left + c * col_w + (col_w - text_w(label)) // 2, 4), label, fill="black")
    for r, row in enumerate(cells):
        if row_labels:
            draw.text((4, top + r * ch + ch // 2 - 5), row_labels[r], fill="black")
        for c, image in enumerate(row):
            big = image.convert("RGB").resize((cw, ch), Image.NEAREST)
            sheet.paste(big, (left + c * col_w + (col_w - cw) // 2, top + r * ch))
    return sheet

"""Pictures of a training run: loss curves and labelled image grids, written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..basics import write_bytes

LABEL_HEIGHT = 14


def save_png(path: Path, image: Image.Image) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())


def plot_loss(history: list[dict[str, Any]], path: Path, keys: tuple[str, ...], title: str = "",
              smooth: int = 20, marks: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """Each key's value per step (faint) and its running mean over `smooth` steps (solid), and each of
    `marks`' (step, value) series as dots joined by a dashed line (e.g. an evaluation loss), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key in keys:
        rows = [r for r in history if r.get(key) is not None]
        steps, values = [r["step"] for r in rows], [r[key] for r in rows]
        line, = ax.plot(steps, values, alpha=0.3, linewidth=0.8)
        window = max(1, min(smooth, len(values) // 4))
        means = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                 for i in range(len(values))]
        ax.plot(steps, means, color=line.get_color(), label=f"{key} (mean of {window})")
    for label, points in (marks or {}).items():
        ax.plot([s for s, _ in points], [v for _, v in points], "o--", markersize=4, label=label)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def image_grid(rows: list[list[Image.Image]], row_labels: list[str], title: str = "", scale: int = 1) -> Image.Image:
    """Images in rows, each row headed by its label, the whole under a title line; `scale` enlarges
    small images by pixel repetition (nearest), so 32 px samples stay readable."""
    font = ImageFont.load_default()
    w, h = (rows[0][0].width * scale, rows[0][0].height * scale)
    columns = max(len(r) for r in rows)
    top = LABEL_HEIGHT if title else 0
    grid = Image.new("RGB", (max(columns * w, 8 * max(map(len, row_labels + [title]))),
                             top + len(rows) * (h + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((2, 1), title, fill="black", font=font)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        y = top + r * (h + LABEL_HEIGHT)
        draw.text((2, y + 1), label, fill="black", font=font)
        for c, im in enumerate(images):
            grid.paste(im.resize((w, h), Image.Resampling.NEAREST), (c * w, y + LABEL_HEIGHT))
    return grid


def save_grid(path: Path, rows: list[list[Image.Image]], row_labels: list[str], title: str = "",
              scale: int = 1) -> Path:
    return save_png(path, image_grid(rows, row_labels, title, scale))


def tile(images: list[Image.Image], columns: int = 4, gap: int = 1) -> Image.Image:
    """Several drawings as one cell: `columns` across, as many rows as needed, a grey line between them."""
    images = list(images)
    w, h = images[0].size
    rows = -(-len(images) // columns)
    cell = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), (170, 170, 170))
    for i, im in enumerate(images):
        cell.paste(im.convert("RGB"), ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return cell

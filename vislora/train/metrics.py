"""Classification metrics and the files they go to: metrics.csv (one row per epoch), metrics.json, metrics.png."""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch

from ..basics import write_bytes

HISTORY_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "images_per_s",
                   "elapsed_s")


def correct_at(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have the label among their k highest logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # [N, kmax]
    hit = top == labels[:, None]                                          # [N, kmax]
    return [int(hit[:, :k].any(dim=-1).sum()) for k in ks]


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (MiB), or None where the OS does not report it."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def write_metrics(out: Path, summary: dict[str, Any], history: list[dict[str, Any]],
                  columns: tuple[str, ...] = HISTORY_COLUMNS) -> None:
    """metrics.json (summary plus history) and metrics.csv (history), each replaced atomically."""
    write_bytes(out / "metrics.json", json.dumps({**summary, "history": history}, indent=1).encode("utf-8"))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_bytes(out / "metrics.csv", text.getvalue().encode("utf-8"))


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss (train and validation) and validation accuracy per epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    validated = [row for row in history if row.get("val_loss") is not None]  # not every epoch is validated
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    left.plot(epochs, [row["train_loss"] for row in history], marker="o" if len(epochs) <= 40 else None,
              label="train")
    if validated:
        at = [row["epoch"] for row in validated]
        left.plot(at, [row["val_loss"] for row in validated], marker="o", label="validation")
        right.plot(at, [row["val_top1"] for row in validated], marker="o", label="top-1")
        if any(row.get("val_top5") is not None for row in validated):  # None: at most 5 classes
            right.plot(at, [row["val_top5"] for row in validated], marker="o", label="top-5")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1.02))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no validation set: the accuracy panel stays empty
            ax.legend()
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 100)), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return path

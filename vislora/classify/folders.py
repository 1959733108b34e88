"""Labelled image lists from a class-folder tree or a CSV, checked in full before training starts.

    root/<class name>/**/<image>        one subfolder per class; class index = sorted folder names
    file.csv with rows path,label       paths relative to the CSV's folder; an optional header row

`scan(source)` decodes every file once (see `vislora.images`): bad files are skipped with one warning each,
naming the file, and a summary count; what cannot be trained on at all (a missing path, no class folders,
an empty class, images loose in the root, no usable image) raises DatasetError before any work starts.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..images import IMAGE_SUFFIXES, MAX_PIXELS, DatasetError, ImageDecodeError, SkippedImageWarning, decode_image, warn_skipped


@dataclass
class Samples:
    """Usable images with their labels, the class table, and the files left out (path, reason)."""

    paths: list[str]
    labels: list[int]
    class_to_idx: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int] | np.ndarray) -> "Samples":
        return Samples([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.class_to_idx)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _folder_candidates(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(path, class) for each file under a class folder, and (path, reason) for links leaving the root."""
    if not root.exists():
        raise DatasetError(f"{root}: no such folder; --data takes a folder with one subfolder per class, or a CSV")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder or a .csv file")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise DatasetError(f"{root}: {len(loose)} images lie in the root (e.g. {loose[0]}); put each image in a "
                           "subfolder named after its class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if not classes:
        raise DatasetError(f"{root}: no class subfolders; make one subfolder per class, holding its images")
    real_root = root.resolve()
    found, outside = [], []
    for name in classes:
        count = 0
        # followlinks=False: a linked folder is not entered, so a link loop cannot make this walk endless.
        for folder, dirs, files in os.walk(root / name, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            for f in sorted(files):
                if _is_hidden(f):
                    continue
                path = os.path.join(folder, f)
                if os.path.commonpath([real_root, os.path.realpath(path)]) != str(real_root):
                    outside.append((path, "a link to a file outside the data folder"))
                    continue
                found.append((path, name))
                count += 1
        if count == 0:
            raise DatasetError(f"{root / name}: the class folder is empty; add images or remove the folder")
    return found, outside


def _csv_candidates(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DatasetError(f"{path}, line {n}: expected 'path,label', got {row!r}")
            rows.append((str(path.parent / row[0].strip()), row[1].strip()))
    if not rows:
        raise DatasetError(f"{path}: no 'path,label' rows")
    return rows


def _decode_all(candidates: list[tuple[str, str]], max_pixels: int, progress: bool) -> tuple[list, list]:
    good, bad = [], []
    # disable=None: tqdm turns itself off when the output is not a terminal (logs, pipes).
    bar = tqdm(candidates, desc="checking images", unit="img", disable=None if progress else True, leave=False)
    for path, label in bar:
        try:
            decode_image(path, max_pixels=max_pixels)
            good.append((path, label))
        except ImageDecodeError as e:
            bad.append((path, str(e).removeprefix(f"{path}: ")))
    return good, bad


def scan(
    source: str | os.PathLike,
    *,
    class_to_idx: dict[str, int] | None = None,
    max_pixels: int = MAX_PIXELS,
    warn: bool = True,
    progress: bool = False,
) -> Samples:
    """Find and decode every image of a class-folder tree or a path,label CSV.

    `class_to_idx` (e.g. a training set's) fixes the class table; a class outside it is an error, so a
    validation folder can never shift the indices. Without it, classes are the sorted names found.
    warn=False leaves the warnings to the caller (e.g. only the main process of a distributed run).
    """
    source = Path(source)
    outside: list[tuple[str, str]] = []
    if source.suffix.lower() == ".csv":
        candidates = _csv_candidates(source)
    else:
        candidates, outside = _folder_candidates(source)
    names = sorted({label for _, label in candidates})
    training = class_to_idx is None
    if class_to_idx is None:
        class_to_idx = {name: i for i, name in enumerate(names)}
    unknown = [n for n in names if n not in class_to_idx]
    if unknown:
        raise DatasetError(f"{source}: classes {unknown} are not among the training classes "
                           f"{list(class_to_idx)}; rename or remove them")
    good, bad = _decode_all(candidates, max_pixels, progress)
    samples = Samples([p for p, _ in good], [class_to_idx[label] for _, label in good], dict(class_to_idx),
                      outside + bad)
    if warn:
        warn_skipped(samples.skipped, source)
    if not samples.paths:
        raise DatasetError(f"{source}: none of its {len(candidates)} files is a usable image")
    if training:  # a class with no usable image would train as a class nothing can teach
        empty = [name for name in names if class_to_idx[name] not in set(samples.labels)]
        if empty:
            where = [str(source / n) for n in empty] if source.suffix.lower() != ".csv" else empty
            raise DatasetError(f"{source}: class {', '.join(where[:5])} has no usable image; add images, "
                               "or remove the class")
    return samples


def split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """A seeded, per-class (stratified) split: about `fraction` of each class goes to the second part."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(samples.labels)
    held: list[int] = []
    for c in sorted(set(samples.labels)):
        members = np.flatnonzero(labels == c)
        n_held = int(round(len(members) * fraction))
        if len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)  # both parts keep at least one image of the class
        held += rng.permutation(members)[:n_held].tolist()
    chosen = set(held)
    kept = [i for i in range(len(samples)) if i not in chosen]
    return samples.subset(kept), samples.subset(sorted(held))

"""Folders of images with captions, checked in full before training starts.

    root/**/<image>            every image under root (hidden files and folders left out)
    root/**/<image stem>.txt   its caption, beside it
    root/metadata.jsonl        or one line per image: {"file_name": "a/b.png", "text": "..."} ("caption" also read)

A caption given for all (`caption=`, the recipes' --caption or DreamBooth's instance prompt) overrides both.
Precedence otherwise: the .txt file, then metadata.jsonl. Caption files must be UTF-8 (anything else is a
DatasetError naming the file, never a caption with U+FFFD in it). Unreadable images are skipped with one warning each
and a count; an empty caption file, or an image without a caption while captions are required, is a
DatasetError naming the files; images smaller than the training resolution are counted in one warning
(they are upscaled).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..images import IMAGE_SUFFIXES, DatasetError, warn_skipped
from ..images import ImageDecodeError, decode_image

METADATA_FILE = "metadata.jsonl"
CAPTION_FIELDS = ("text", "caption")


class SmallImageWarning(UserWarning):
    """Images smaller than the training resolution (they are upscaled, and come out soft)."""


@dataclass
class Captioned:
    """Usable images, their captions and sizes (w, h), and the files left out (path, reason)."""

    paths: list[str]
    captions: list[str]
    sizes: list[tuple[int, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _metadata_captions(root: Path) -> dict[str, str]:
    path = root / METADATA_FILE
    if not path.is_file():
        return {}
    found = {}
    for number, line in enumerate(_utf8_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
            text = next(row[k] for k in CAPTION_FIELDS if k in row)
        except (ValueError, KeyError, StopIteration, TypeError, RecursionError):
            raise DatasetError(f"{path}, line {number}: expected {{\"file_name\": ..., \"text\": ...}}") from None
        if not str(text).strip():
            raise DatasetError(f"{path}, line {number}: empty caption for {name}")
        found[str((root / name).resolve())] = str(text).strip()
    return found


def _utf8_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is a DatasetError naming it (never U+FFFD in a caption)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                           "save it as UTF-8") from None


def check_caption_files(root: Path, flag: str = "--data") -> None:
    """Read metadata.jsonl and every caption file beside an image, as training will, before any model loads:
    a file that is not UTF-8, an empty caption or a bad metadata line is found now."""
    _metadata_captions(root)
    for image in image_files(root, flag):
        _caption_file(image)


def _caption_file(image: Path) -> str | None:
    txt = image.with_suffix(".txt")
    if not txt.is_file():
        return None
    text = _utf8_text(txt).strip()
    if not text:
        raise DatasetError(f"{txt}: empty caption file; write the caption, or delete it and use --caption")
    return text


def image_files(root: Path, flag: str) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{flag} {root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DatasetError(f"{flag} {root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def scan_captioned(root: str | os.PathLike, *, flag: str = "--data", caption: str | None = None,
                   trigger: str | None = None, min_size: int = 0, warn: bool = True) -> Captioned:
    """Images under `root` with their captions (see the module docstring); `trigger` is put first in each."""
    root = Path(root)
    files = image_files(root, flag)
    from_metadata = {} if caption else _metadata_captions(root)
    paths, captions, sizes, skipped, missing = [], [], [], [], []
    for image in files:
        text = caption or _caption_file(image) or from_metadata.get(str(image.resolve()))
        if text is None:
            missing.append(str(image))
            continue
        try:
            with decode_image(image) as im:
                size = im.size
        except ImageDecodeError as e:
            skipped.append((str(image), str(e).removeprefix(f"{image}: ")))
            continue
        paths.append(str(image))
        captions.append(f"{trigger}, {text}" if trigger and not text.startswith(trigger) else text)
        sizes.append(size)
    if missing:
        raise DatasetError(f"{flag} {root}: {len(missing)} images have no caption (no .txt beside them, no "
                           f"{METADATA_FILE} line), e.g. {missing[:3]}; add captions or give --caption")
    if warn:
        warn_skipped(skipped, root)
    if not paths:
        raise DatasetError(f"{flag} {root}: none of its {len(files)} images is readable")
    small = [p for p, (w, h) in zip(paths, sizes) if min(w, h) < min_size]
    if small and warn:
        warnings.warn(f"{flag} {root}: {len(small)} of {len(paths)} images are smaller than the training "
                      f"resolution {min_size} and will be upscaled, e.g. {small[:3]}", SmallImageWarning,
                      stacklevel=2)
    return Captioned(paths, captions, sizes, skipped)


__all__ = ["Captioned", "DatasetError", "SmallImageWarning", "scan_captioned"]

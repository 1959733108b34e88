"""The only files the studio touches: the adapter folder (read) and its own output folder (write).

The browser never sends a path. It names an adapter by the key the catalogue gave it (a file name listed
here), and every key is looked up in that listing, never joined onto a folder. A listed file must stay
inside the folder once symlinks are resolved: a link that points out is listed as refused, not read.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import VisloraError

# What a user might drop into an adapter folder; pickles are listed so the page can say why they are refused.
ADAPTER_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".pkl")


class PathRefused(VisloraError):
    """A name or path that is not one of the folder's own files."""


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, is `root` or under it (root already resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(root)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Listed:
    """One file of the adapter folder: its key (file name), where it is, and why it is refused ("" if not)."""

    key: str
    path: Path
    refused: str = ""


class AdapterFolder:
    """The adapter files directly in `root` (not in subfolders), by file name."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.realpath(root))
        self.given = Path(root)  # as the user wrote it: what the page and its exported commands show
        if not self.root.is_dir():
            raise PathRefused(f"--adapters {root}: not a folder; pass the folder that holds your .safetensors files")
        self._files: dict[str, Listed] = {}
        self.rescan()

    def rescan(self) -> list[Listed]:
        found: dict[str, Listed] = {}
        for entry in sorted(self.root.iterdir(), key=lambda p: p.name):
            if entry.suffix.lower() not in ADAPTER_SUFFIXES or entry.is_dir():
                continue
            refused = "" if inside(self.root, entry) else "a symlink to a file outside the adapter folder"
            found[entry.name] = Listed(entry.name, self.root / entry.name, refused)
        self._files = found
        return list(found.values())

    @property
    def files(self) -> list[Listed]:
        return list(self._files.values())

    def resolve(self, key: str) -> Path:
        """The file listed under `key`, checked again against the folder (a link may have changed since)."""
        listed = self._files.get(key) if isinstance(key, str) else None
        if listed is None:
            raise PathRefused(f"{key!r} is not a file of the adapter folder; pick one from the list")
        if listed.refused or not inside(self.root, listed.path):
            raise PathRefused(f"{key}: {listed.refused or 'now points outside the adapter folder'}")
        return listed.path


class OutputFolder:
    """Where the studio writes exports; names are made here, never taken from a request."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.realpath(root))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise PathRefused(f"--out {root}: a file is there, not a folder; give a folder for the exports") from None
        except OSError as e:
            raise PathRefused(f"--out {root}: cannot make the folder ({e.strerror}); give a folder you can "
                              "write") from None
        try:  # a real write: os.access says yes to root on a read-only mount
            tempfile.TemporaryFile(dir=self.root).close()
        except OSError as e:
            raise PathRefused(f"--out {root}: cannot write in the folder ({e.strerror}); give a folder you can "
                              "write") from None

    def new(self, stem: str, suffix: str) -> Path:
        """A fresh file name under the folder: `stem` (made by the studio) plus a counter."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._") or "out"
        n = 0
        while (path := self.root / f"{safe}-{n:04d}{suffix}").exists():
            n += 1
        return path

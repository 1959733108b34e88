"""Low-level helpers every layer may use: seeds, file hashes and atomic writes.

    derive_seed(seed, epoch, index)   -> a well-mixed 63-bit seed
    sha256_file(path)                 -> hex digest, read in 1 MiB blocks
    write_bytes(path, payload)        -> the file replaced atomically (temp file beside it, fsync, rename)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

_AUGMENT, _ORDER = 0, 1  # keep the two uses of the seed apart


def derive_seed(seed: int, epoch: int, index: int = 0, purpose: int = _AUGMENT) -> int:
    """A well-mixed 63-bit seed from non-negative integers (torch.manual_seed takes < 2**63)."""
    state = np.random.SeedSequence([seed, epoch, index, purpose]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Replace `path` with `payload` atomically: a unique temp file beside it, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make the renames and new files in `folder` durable, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform (Windows); the rename is still atomic there
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

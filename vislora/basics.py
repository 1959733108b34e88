"""Low-level helpers every layer may use: seeds, file hashes and atomic writes.

    derive_seed(seed, epoch, index)   -> a well-mixed 63-bit seed
    sha256_file(path)                 -> hex digest, read in 1 MiB blocks
    write_bytes(path, payload)        -> the file replaced atomically (temp file beside it, fsync, rename);
                                         temp files left by a killed writer are removed on the next write
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Iterable

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


# Temp files are named `.<target>.vislora-tmp-<pid>-<random>` so a reader of the folder recognises them, and a
# later write into the folder can tell a dead writer's leftover (its pid is gone) from a live writer's file.
TEMP_TAG = ".vislora-tmp-"
_TEMP_NAME = re.compile(r"^\..+" + re.escape(TEMP_TAG) + r"(?P<pid>\d+)-[0-9a-f]+$")


def temp_path(path: Path) -> Path:
    """A fresh temp file name beside `path`, recognisable and carrying this process's id."""
    return path.parent / f".{path.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform without signals: assume it is writing
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files in `folder` whose writing process is gone (a kill mid-write leaves them)."""
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and TEMP_TAG in e.name]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _alive(int(match["pid"])):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # removed by another writer meanwhile, or not ours to remove
    return removed


def write_bytes(path: str | os.PathLike, payload: bytes | Iterable[bytes | memoryview]) -> Path:
    """Replace `path` with `payload` (bytes, or chunks written in order) atomically: a temp file beside it,
    fsync, then rename over it. The file's mode follows the umask, as other tools' files do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_path(path)
    chunks = (payload,) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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

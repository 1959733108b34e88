"""Training checkpoints as transactions: a folder appears complete and verified, or not at all.

    run_dir/ckpt-000000120/   <name>.safetensors and <name>.json files, manifest.json, COMPLETE

Writing: every file goes into a temporary folder beside the others and is fsynced; then manifest.json
(sha256 of each file, the step, the settings hash, the toolkit version); then the COMPLETE marker, last;
then one rename makes the folder visible. Older checkpoints are pruned only after that, so a crash at any
moment leaves the previous complete checkpoint in place; pruning counts only this run's checkpoints that
verify, so a corrupt one never pushes a good one out. Reading (`latest`) checks the marker, the manifest,
the file list and every hash, and falls back to the next older checkpoint, with a warning, when one fails.
Nothing is unpickled: tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import VisloraError
from ..formats import container
from ..basics import fsync_dir, sha256_file
from ..version import __version__

FORMAT = "vislora-checkpoint"
MANIFEST, MARKER, PREFIX, TEMP_PREFIX = "manifest.json", "COMPLETE", "ckpt-", ".tmp-ckpt-"


class CheckpointError(VisloraError):
    """A checkpoint cannot be used (incomplete, corrupt, not ours, or made with other settings)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped on resume."""


@dataclass
class Checkpoint:
    """A verified checkpoint folder."""

    path: Path
    step: int
    manifest: dict[str, Any]

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return container.read(self.path / f"{name}.safetensors")[0]

    def json(self, name: str) -> Any:
        return json.loads((self.path / f"{name}.json").read_text(encoding="utf-8"))


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _step_of(path: Path) -> int | None:
    tail = path.name[len(PREFIX):]
    return int(tail) if path.name.startswith(PREFIX) and tail.isdigit() else None


def _folders(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ckpt-* folder, newest first."""
    if not run_dir.is_dir():
        return []
    found = [(_step_of(p), p) for p in run_dir.iterdir() if p.is_dir()]
    return sorted(((s, p) for s, p in found if s is not None), reverse=True)


def clean_temp(run_dir: str | os.PathLike) -> None:
    """Delete temporary folders a killed writer left behind."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.name.startswith(TEMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def write(run_dir: str | os.PathLike, step: int, *, tensors: dict[str, dict[str, torch.Tensor]],
          documents: dict[str, Any], config_hash: str = "", keep: int = 2) -> Path:
    """Write checkpoint `step` (tensors -> <name>.safetensors, documents -> <name>.json); keep the newest `keep`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_temp(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=run_dir))
    final = run_dir / f"{PREFIX}{step:09d}"
    try:
        payloads = {f"{n}.safetensors": container.serialize(t, {"format": "pt"}) for n, t in tensors.items()}
        payloads.update({f"{n}.json": json.dumps(d, indent=1).encode("utf-8") for n, d in documents.items()})
        for name, data in payloads.items():
            _write_synced(tmp / name, data)
        manifest = {"format": FORMAT, "version": __version__, "step": step, "config_hash": config_hash,
                    "files": {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}}
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
        _write_synced(tmp / MARKER, b"")
        fsync_dir(tmp)
        if final.exists():  # the same step written before (a rerun): move it aside, never delete first
            aside = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=run_dir))
            os.replace(final, aside / final.name)
        os.replace(tmp, final)
        fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    clean_temp(run_dir)
    prune(run_dir, keep, config_hash=config_hash, written=final)
    return final


def _manifest(path: Path) -> dict[str, Any] | None:
    """A checkpoint's manifest as written (unverified), or None when there is none to read."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def prune(run_dir: str | os.PathLike, keep: int, *, config_hash: str | None = None,
          written: str | os.PathLike | None = None) -> None:
    """Delete this run's checkpoints older than its newest `keep` good ones.

    This run's: the manifest records `config_hash` (any, when None); another run's are never touched. Good:
    they verify (`written`, the one just made, without reading it again). A corrupt checkpoint is never
    counted, so it cannot push a good one out; one newer than the kept ones stays for `latest` to skip.
    """
    if keep < 1:
        return
    good, older = 0, []
    for _, path in _folders(Path(run_dir)):
        manifest = _manifest(path)
        if manifest is None or (config_hash is not None and manifest.get("config_hash") != config_hash):
            continue
        if good >= keep:
            older.append(path)
        elif (written is not None and path == Path(written)) or _verifies(path):
            good += 1
    for path in older:
        shutil.rmtree(path, ignore_errors=True)


def _verifies(path: Path) -> bool:
    try:
        verify(path)
    except CheckpointError:
        return False
    return True


def verify(path: str | os.PathLike) -> Checkpoint:
    """Check the marker, the manifest, the exact file list and every sha256; CheckpointError if any fails."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path}: no {MARKER} marker (the write did not finish)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files, step = dict(manifest["files"]), int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vislora checkpoint (manifest format {manifest.get('format')!r})")
    present = {p.name for p in path.iterdir()} - {MANIFEST, MARKER}
    if present != set(files):
        raise CheckpointError(f"{path}: files {sorted(present ^ set(files))} differ from the manifest")
    for name, digest in files.items():
        if sha256_file(path / name) != digest:
            raise CheckpointError(f"{path}: {name} does not match its sha256 in the manifest (corrupt)")
    return Checkpoint(path, step, manifest)


def latest(run_dir: str | os.PathLike, *, config_hash: str | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies, skipping broken ones with a warning; None if there is none.

    A verified checkpoint made with other settings (config_hash differs) is an error, not a fallback:
    every older one would differ the same way.
    """
    for _, path in _folders(Path(run_dir)):
        try:
            found = verify(path)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}", CheckpointWarning, stacklevel=2)
            continue
        if config_hash is not None and found.manifest.get("config_hash") != config_hash:
            raise CheckpointError(f"{path}: made with different training settings; resume with the same "
                                  "arguments, or write to a new --out")
        return found
    return None

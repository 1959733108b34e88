"""The safetensors container, read and written by our own code so every check is ours.

Layout: 8-byte little-endian header length N, N bytes of JSON header, then the tensor bytes.
Reading never unpickles: pickles, zip archives, git-LFS pointers and HTML pages are recognised by their
first bytes and refused with their own category. Writing is deterministic (sorted keys, sorted metadata)
and atomic (temp file in the same folder, fsync, rename), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from ..basics import fsync_dir, write_bytes  # noqa: F401  (write_bytes: the writer below)

from ..errors import AdapterFormatError, UnsafeFormatError

MAX_HEADER_BYTES = 16 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# The order the safetensors library lays tensors out in (its dtype enum, largest first; then by key), so the
# bytes we write are the bytes safetensors.torch.save writes, the `__metadata__` order aside. Hashes kohya
# defines over that serialisation (sshs_*) then mean the same thing on our files.
LAYOUT_ORDER = {name: i for i, name in enumerate(
    ("I64", "F64", "F32", "I32", "BF16", "F16", "I16", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"))}

# First bytes of files that are not safetensors, and what to call them.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "pickle", "a zip archive (torch.save format: pickled)"),
    (b"version https://git-lfs", "lfs-pointer", "a git-LFS pointer, not the file; fetch it with `git lfs pull`"),
    (b"7z\xbc\xaf\x27\x1c", "not-safetensors", "a 7z archive"),
    (b"\x1f\x8b", "not-safetensors", "a gzip archive"),
    (b"Rar!", "not-safetensors", "a rar archive"),
)


def sniff(path: Path, data: bytes) -> None:
    """Refuse files that are something else, by their first bytes. A real safetensors file has "{" at byte 8,
    which also keeps a header length whose low bytes happen to read 0x80 0x02 from looking like a pickle."""
    if not data:
        raise AdapterFormatError("the file is empty (0 bytes)", path=path, category="empty")
    if data[8:9] == b"{":
        return
    for magic, category, what in _SIGNATURES:
        if data.startswith(magic):
            cls = UnsafeFormatError if category == "pickle" else AdapterFormatError
            raise cls(f"this is {what}; vislora reads weights from .safetensors only", path=path, category=category)
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise UnsafeFormatError("this is a raw pickle; vislora never unpickles adapter files (use .safetensors)",
                                path=path, category="pickle")
    if data[:64].lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise AdapterFormatError("this is an HTML/XML page (a failed download?), not safetensors",
                                 path=path, category="not-safetensors")
    if len(data) >= 8:
        raise AdapterFormatError("not a safetensors file (no JSON header after the 8-byte length)", path=path,
                                 category="not-safetensors")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor (as an owned CPU copy) and the metadata, validating the container fully."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError("no such file", path=path, category="missing")
    return parse(path.read_bytes(), path)


def parse(data: bytes, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`read` for a file's bytes already in memory (`path` names it in errors)."""
    path = Path(path)
    sniff(path, data)
    if len(data) < 8:
        raise AdapterFormatError(f"{len(data)} bytes is too short for a safetensors header", path=path,
                                 category="truncated")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise AdapterFormatError(f"header claims {n:,} bytes (limit {MAX_HEADER_BYTES:,})", path=path,
                                 category="header-too-large")
    if 8 + n > len(data):
        raise AdapterFormatError(f"header claims {n:,} bytes but the file has {len(data) - 8:,} after the length",
                                 path=path, category="truncated")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise AdapterFormatError(f"the header is not valid JSON: {e}", path=path, category="bad-header") from None
    if not isinstance(header, dict):
        raise AdapterFormatError("the header is not a JSON object", path=path, category="bad-header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise AdapterFormatError("__metadata__ must map strings to strings", path=path, category="bad-header")
    buffer = memoryview(data)[8 + n :]
    spans, tensors = [], {}
    for key, info in header.items():
        try:
            dtype, shape, (start, stop) = DTYPES.get(info["dtype"]), list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise AdapterFormatError(f"tensor {key!r} has a malformed entry {info!r}", path=path,
                                     category="bad-header") from None
        if dtype is None:
            raise AdapterFormatError(f"tensor {key!r} has unknown dtype {info['dtype']!r}", path=path,
                                     category="bad-dtype")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(
                isinstance(o, int) and o >= 0 for o in (start, stop)):
            raise AdapterFormatError(f"tensor {key!r} has a bad shape or offsets", path=path, category="bad-header")
        numel = 1
        for d in shape:
            numel *= d
        if stop - start != numel * dtype.itemsize:
            raise AdapterFormatError(f"tensor {key!r}: offsets span {stop - start} bytes, shape {shape} needs "
                                     f"{numel * dtype.itemsize}", path=path, category="bad-offsets")
        spans.append((start, stop, key))
        tensors[key] = (dtype, shape, start, stop)
    position = 0
    for start, stop, key in sorted(spans):
        if start != position:
            category = "overlapping-offsets" if start < position else "bad-offsets"
            raise AdapterFormatError(f"tensor {key!r} starts at byte {start}, expected {position}", path=path,
                                     category=category)
        position = stop
    if position > len(buffer):
        raise AdapterFormatError(f"tensor data needs {position:,} bytes, the file has {len(buffer):,}",
                                 path=path, category="truncated")
    if position < len(buffer):
        raise AdapterFormatError(f"{len(buffer) - position:,} unexplained bytes after the tensors", path=path,
                                 category="trailing-bytes")
    out = {}
    for key, (dtype, shape, start, stop) in tensors.items():
        raw = bytearray(buffer[start:stop])
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[key] = flat.reshape(shape)
    return out, dict(metadata)


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes: tensors in safetensors' own layout order (LAYOUT_ORDER), metadata keys
    sorted and written as UTF-8 like the safetensors library (so the header has its length too)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    blobs, offset = [], 0
    for key, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"cannot store dtype {t.dtype} for {key!r}")
    for key in sorted(tensors, key=lambda k: (LAYOUT_ORDER[DTYPE_NAMES[tensors[k].dtype]], k)):
        t = tensors[key].detach().to("cpu").contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format allows space padding; 8-byte alignment for the data
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write atomically: a unique temp file beside the target, fsync, then rename over it."""
    return write_bytes(path, serialize(tensors, metadata))

"""The safetensors container: the safetensors library reads and writes it, under our own checks.

Layout: 8-byte little-endian header length N, N bytes of JSON header, then the tensor bytes.
Reading (`read_header`) looks at the first bytes and the header only, never the data, and checks all that the
header claims before the library is asked for anything: pickles, zip archives, git-LFS pointers and HTML pages
are recognised by their first bytes and refused with their own category (nothing is ever unpickled); the
header's size and JSON nesting are bounded; keys are unique; dtypes known; offsets tile the data exactly and
the file's size matches. Only then does the library map the file (`safe_open`, mmap): tensors are views of
the mapped file, so a load holds one copy, and pages are read when used. Every problem is an
AdapterFormatError naming the file and a category.
Writing: the library lays the tensors out; we write the header with sorted metadata (the library's order is
random) so equal inputs give equal bytes, then write atomically (basics.write_bytes).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes, save as save_bytes  # bytes in, bytes out: no pickle

from ..basics import fsync_dir, write_bytes  # noqa: F401  (write_bytes: the writer below)
from ..errors import AdapterFormatError, UnsafeFormatError
from .checks import check_json_limits

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_HEADER_DEPTH = 8  # a valid header nests 3 deep: {name: {"shape": [...]}}
SMALL_TENSOR_BYTES = 64  # header-only reads still read tensors this small (kohya's scalar alphas)

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

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


@dataclass(frozen=True)
class Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # offsets within the data section
    stop: int


@dataclass(frozen=True)
class Header:
    """A checked header: tensor entries in file order, the metadata, and where the data section starts."""

    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def _header_length(first: bytes, path: Path, size: int) -> int:
    """N from the first bytes (at least 64, or the whole file), after sniffing and the size checks."""
    sniff(path, first)
    if size < 8:
        raise AdapterFormatError(f"{size} bytes is too short for a safetensors header", path=path,
                                 category="truncated")
    (n,) = struct.unpack("<Q", first[:8])
    if n > MAX_HEADER_BYTES:
        raise AdapterFormatError(f"header claims {n:,} bytes (limit {MAX_HEADER_BYTES:,})", path=path,
                                 category="header-too-large")
    if 8 + n > size:
        raise AdapterFormatError(f"header claims {n:,} bytes but the file has {size - 8:,} after the length",
                                 path=path, category="truncated")
    return n


def _entry(key: str, info: object, path: Path) -> Entry:
    try:
        name, shape, (start, stop) = info["dtype"], list(info["shape"]), info["data_offsets"]  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise AdapterFormatError(f"tensor {key!r} has a malformed entry {info!r}"[:300], path=path,
                                 category="bad-header") from None
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise AdapterFormatError(f"tensor {key!r} has unknown dtype {name!r}"[:300], path=path, category="bad-dtype")
    ints = [*shape, start, stop]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ints):
        raise AdapterFormatError(f"tensor {key!r} has a bad shape or offsets", path=path, category="bad-header")
    numel = 1
    for d in shape:
        numel *= d
    if stop - start != numel * dtype.itemsize:
        raise AdapterFormatError(f"tensor {key!r}: offsets span {stop - start} bytes, shape {shape} needs "
                                 f"{numel * dtype.itemsize}", path=path, category="bad-offsets")
    return Entry(dtype, tuple(shape), start, stop)


def _decode(raw: bytes, path: Path, data_bytes: int, data_start: int) -> Header:
    """Check the JSON header `raw` against a data section of `data_bytes`."""
    check_json_limits(raw, "the header", path, "bad-header", max_depth=MAX_HEADER_DEPTH)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise AdapterFormatError(f"the header is not valid JSON: {e}", path=path, category="bad-header") from None
    if not isinstance(header, dict):
        raise AdapterFormatError("the header is not a JSON object", path=path, category="bad-header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise AdapterFormatError("__metadata__ must map strings to strings", path=path, category="bad-header")
    entries = {key: _entry(key, info, path) for key, info in header.items()}
    position = 0
    for key, e in sorted(entries.items(), key=lambda kv: (kv[1].start, kv[1].stop)):
        if e.start != position:
            category = "overlapping-offsets" if e.start < position else "bad-offsets"
            raise AdapterFormatError(f"tensor {key!r} starts at byte {e.start}, expected {position}", path=path,
                                     category=category)
        position = e.stop
    if position > data_bytes:
        raise AdapterFormatError(f"tensor data needs {position:,} bytes, the file has {data_bytes:,}",
                                 path=path, category="truncated")
    if position < data_bytes:
        raise AdapterFormatError(f"{data_bytes - position:,} unexplained bytes after the tensors", path=path,
                                 category="trailing-bytes")
    return Header(entries, dict(metadata), data_start)


def read_header(path: str | os.PathLike) -> Header:
    """The checked header of a file, reading its first 8 + N bytes only."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError("no such file" if not path.exists() else "not a file", path=path,
                                 category="missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(64)
        n = _header_length(first, path, size)
        raw = (first + f.read(max(0, 8 + n - len(first))))[8 : 8 + n]
    return _decode(raw, path, size - 8 - n, 8 + n)


def _library_error(path: Path, e: Exception) -> AdapterFormatError:
    return AdapterFormatError(f"the safetensors library refused it: {e}", path=path, category="bad-header")


def read(path: str | os.PathLike, *, values: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata, the header checked first. Tensors are views of the memory-mapped file
    (copy-on-write: changing one never changes the file). values=False reads the header only: tensors come
    back on the meta device (shape and dtype, no data), except those of at most SMALL_TENSOR_BYTES."""
    path = Path(path)
    header = read_header(path)
    if not values:
        with open(path, "rb") as f:
            return _header_only(header, _file_fetch(f)), header.metadata
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in header.entries}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _library_error(path, e) from None
    return tensors, header.metadata


def _header_only(header: Header, fetch) -> dict[str, torch.Tensor]:
    """Meta tensors (shape and dtype only), except those of at most SMALL_TENSOR_BYTES, whose bytes `fetch`
    (start, length within the file) gives."""
    out = {}
    for key, e in header.entries.items():
        if e.stop - e.start > SMALL_TENSOR_BYTES:
            out[key] = torch.empty(e.shape, dtype=e.dtype, device="meta")
            continue
        raw = bytearray(fetch(header.data_start + e.start, e.stop - e.start))
        out[key] = (torch.frombuffer(raw, dtype=e.dtype) if raw else torch.empty(0, dtype=e.dtype)).reshape(e.shape)
    return out


def _file_fetch(f):
    def fetch(start: int, length: int) -> bytes:
        f.seek(start)
        return f.read(length)

    return fetch


def parse(data: bytes, path: str | os.PathLike, *, values: bool = True
          ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`read` for a file's bytes already in memory (`path` names it in errors); tensors are owned copies."""
    path = Path(path)
    n = _header_length(data[:64], path, len(data))
    header = _decode(bytes(data[8 : 8 + n]), path, len(data) - 8 - n, 8 + n)
    if not values:
        return _header_only(header, lambda start, length: data[start : start + length]), header.metadata
    try:
        loaded = load_bytes(bytes(data))
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise _library_error(path, e) from None
    return {key: loaded[key] for key in header.entries}, header.metadata


def chunks(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> list[bytes | memoryview]:
    """The file's bytes in two pieces (length + header, data) without joining them: the library lays the
    tensors out (its order: dtype, then key), and the header is rewritten with the metadata keys sorted."""
    for key, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"cannot store dtype {t.dtype} for {key!r}")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map strings to strings; {key!r} -> {type(value).__name__}")
    prepared = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    try:
        raw = save_bytes(prepared)
    except RuntimeError:  # tensors sharing memory (tied weights): store each on its own
        raw = save_bytes({k: t.clone() for k, t in prepared.items()})
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    if metadata:
        header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}, **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format allows space padding; 8-byte alignment for the data
    return [struct.pack("<Q", len(text)) + text, memoryview(raw)[8 + n :]]


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes (see `chunks`)."""
    return b"".join(chunks(tensors, metadata))


def write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write atomically: a temp file beside the target, fsync, then rename over it."""
    return write_bytes(path, chunks(tensors, metadata))

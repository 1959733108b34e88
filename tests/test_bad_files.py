"""Every class of bad adapter file gets its own typed error naming the file; the model never changes."""

import io
import os
import pickle
import struct
import zipfile

import pytest
import torch
from conftest import checksum, tiny_vit

import vislora
from vislora import AdapterFormatError, UnsafeFormatError
from vislora.formats import container


class Canary:
    """Unpickling this creates a file: the test proves no code path ever unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _good(tmp_path):
    vit = tiny_vit()
    vislora.inject(vit, "vit.attn", rank=2, init="random")
    return vislora.save_adapter(vit, tmp_path / "good.safetensors").read_bytes()


def _with_header(data: bytes, edit) -> bytes:
    import json

    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def _tensor_file(tensors):
    return container.serialize(tensors, {"format": "pt"})


def _corpus(tmp_path):
    good = _good(tmp_path)
    canary = str(tmp_path / "CANARY")
    n = struct.unpack("<Q", good[:8])[0]
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Canary(canary)))
    lora = {"blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 64), "blocks.0.attn.qkv.lora_B.weight": torch.ones(192, 2)}
    return canary, {
        "empty": (b"", AdapterFormatError, "empty"),
        "tiny": (b"\x01\x02\x03", AdapterFormatError, "truncated"),
        "raw pickle": (pickle.dumps(Canary(canary)), UnsafeFormatError, "pickle"),
        "torch zip": (zbuf.getvalue(), UnsafeFormatError, "pickle"),
        "lfs pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", AdapterFormatError,
                        "lfs-pointer"),
        "html page": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", AdapterFormatError, "not-safetensors"),
        "7z": (b"7z\xbc\xaf\x27\x1c" + b"\x00" * 40, AdapterFormatError, "not-safetensors"),
        "truncated data": (good[:-10], AdapterFormatError, "truncated"),
        "truncated header": (good[: 8 + n // 2], AdapterFormatError, "truncated"),
        "trailing bytes": (good + b"\x00" * 16, AdapterFormatError, "trailing-bytes"),
        "header too large": (struct.pack("<Q", 200 * 1024 * 1024) + b"{" + b" " * 64, AdapterFormatError,
                             "header-too-large"),
        "bad json": (struct.pack("<Q", 8) + b"{not js}", AdapterFormatError, "bad-header"),
        "duplicate keys": (_dup_keys(good), AdapterFormatError, "bad-header"),
        "overlapping offsets": (_with_header(good, _overlap), AdapterFormatError, "overlapping-offsets"),
        "unknown dtype": (_with_header(good, _bad_dtype), AdapterFormatError, "bad-dtype"),
        "nan": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_A.weight": torch.full((2, 64), float("nan"))}),
                AdapterFormatError, "non-finite"),
        "inf": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_B.weight": torch.full((192, 2), float("inf"))}),
                AdapterFormatError, "non-finite"),
        "int64 factor": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 64, dtype=torch.int64)}),
                         AdapterFormatError, "bad-dtype"),
        "float64 factor": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 64, dtype=torch.float64)}),
                           AdapterFormatError, "bad-dtype"),
        "fp8 factor": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 64).to(torch.float8_e4m3fn)}),
                       AdapterFormatError, "bad-dtype"),
        "wrong rank": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_B.weight": torch.ones(192, 3)}),
                       vislora.AdapterCompatError, "shape-mismatch"),
        "only lora_A": (_tensor_file({"blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 64)}), AdapterFormatError,
                        "incomplete"),
        "not an adapter": (_tensor_file({"model.weight": torch.ones(3)}), AdapterFormatError, "not-an-adapter"),
        "lora bias": (_tensor_file({**lora, "blocks.0.attn.qkv.lora_B.bias": torch.ones(192)}),
                      AdapterFormatError, "unsupported"),
        "dora magnitude of the wrong size": (
            _tensor_file({**lora, "blocks.0.attn.qkv.lora_magnitude_vector": torch.ones(191)}),
            AdapterFormatError, "shape-mismatch"),
        "kohya module without its up factor": (_tensor_file({"lora_unet_x.lora_down.weight": torch.ones(2, 4)}),
                                               AdapterFormatError, "incomplete"),
    }


def _dup_keys(good: bytes) -> bytes:
    n = struct.unpack("<Q", good[:8])[0]
    text = good[8:8 + n].rstrip()
    first_key_end = text.index(b"}") + 1  # end of the __metadata__ object
    text = text[:first_key_end] + b',"__metadata__":{}' + text[first_key_end:]
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + good[8 + n:]


def _overlap(header):
    keys = [k for k in header if k != "__metadata__"]
    header[keys[1]]["data_offsets"] = header[keys[0]]["data_offsets"]


def _bad_dtype(header):
    key = next(k for k in header if k != "__metadata__")
    header[key]["dtype"] = "C64"


def test_bad_file_corpus(tmp_path):
    canary, corpus = _corpus(tmp_path)
    vit = tiny_vit()
    before = checksum(vit)
    assert len(corpus) >= 24
    for label, (data, error, category) in corpus.items():
        for suffix in (".safetensors", ".pt", ".bin", ""):
            path = tmp_path / f"bad{suffix}"
            path.write_bytes(data)
            with pytest.raises(error) as info:
                vislora.load_adapter(vit, path)
            assert info.value.category == category, (label, str(info.value))
            assert str(path) in str(info.value), label
            assert checksum(vit) == before, label
            assert not any(isinstance(m, vislora.AdapterLayer) for m in vit.modules()), label
    assert not os.path.exists(canary), "a pickle was executed"


def test_missing_file(tmp_path):
    with pytest.raises(AdapterFormatError, match="no such file"):
        vislora.load_adapter(tiny_vit(), tmp_path / "nope.safetensors")


def test_header_length_that_looks_like_pickle_bytes_is_still_read(tmp_path):
    """A header of 0x0280 bytes starts the file with 80 02, a pickle's first bytes; it is still safetensors."""
    pad = {"format": "pt", "vislora.pad": ""}
    lora = {"blocks.0.attn.qkv.lora_A.weight": torch.ones(2, 64), "blocks.0.attn.qkv.lora_B.weight": torch.zeros(192, 2)}
    for extra in range(600):
        pad["vislora.pad"] = "x" * extra
        data = container.serialize(lora, pad)
        if data[:2] == b"\x80\x02":
            break
    else:
        pytest.skip("no padding gives a 0x0280 header")
    path = tmp_path / "p.safetensors"
    path.write_bytes(data)
    tensors, _ = container.read(path)
    assert set(tensors) == set(lora)


def test_no_torch_load_or_pickle_in_package():
    """Static guard: the package never calls torch.load / pickle.load(s)."""
    import pathlib
    import re

    root = pathlib.Path(vislora.__file__).parent
    for py in root.rglob("*.py"):
        text = py.read_text()
        assert not re.search(r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False", text), py

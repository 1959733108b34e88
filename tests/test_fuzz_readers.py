"""Property: any safetensors header and metadata, fed to the readers, either reads or fails with a typed
VisloraError; never another exception, and a refused load never changes the model.

Headers are built from parts that real files have (vislora, kohya and PEFT key names, dtypes, shapes, offsets
that tile the data, module tables, PEFT scale settings), then mutated: wrong dtypes and shapes, bad offsets,
deep or non-object JSON, NaN / inf / 1e30 / 0 / negative / string alphas, odd ranks and slices. The bytes
path (formats.parse: the same checks, in the same order, as formats.read) runs at least 10,000 of them; a
smaller sample goes through files: read_adapter, inspect's header-only reader and load_adapter on a tiny ViT.
Derandomized, so every run draws the same cases; the counts are printed at the end of the test session.
"""

import json
import math
import random
import struct

import pytest
import torch
from conftest import FUZZ_COUNTS, checksum, tiny_vit

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import vislora  # noqa: E402
from vislora import formats  # noqa: E402
from vislora.errors import VisloraError  # noqa: E402
from vislora.tools.inspect import describe  # noqa: E402

BYTES_CASES = 10_000
FILE_CASES = 400

MODULES = ["blocks.0.attn.qkv", "blocks.1.attn.proj", "unet.down.0", "lora_unet_down_blocks_0_attentions_0_proj_in",
           "lora_te_text_model_encoder_layers_0_mlp_fc1", "base_model.model.blocks.0.attn.qkv", "head", "x"]
PARTS = ["lora_A.weight", "lora_B.weight", "lora_mid.weight", "lora_down.weight", "lora_up.weight", "alpha",
         "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w2", "diff", "dora_scale",
         "lora_magnitude_vector", "weight", "lora.down.weight", "lora.up.weight", "oft_blocks", "lora_B.bias"]
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "C64", "f32", ""]
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1}
NUMBERS = [float("nan"), float("inf"), -float("inf"), 1e30, 1e39, 0.0, -1.0, 1.0, 2.0, 4.0, 8.0, 1e-30, 3, 70, -2,
           "2", "", None, [1, 2], True]
JSONISH = ["[" * 5000 + "]" * 5000, "[" * 300, "{", "null", "[]", '"x"', "1e999", "NaN", "{}", '{"a": [1, {"b": 2}]}']


def number(rng: random.Random):
    return rng.choice(NUMBERS) if rng.random() < 0.8 else rng.uniform(-1e3, 1e3)


def loose_tensors(rng: random.Random) -> list:
    """Up to 4 tensors with names, dtypes and shapes drawn independently."""
    out = []
    for _ in range(rng.randint(0, 4)):
        key = f"{rng.choice(MODULES)}.{rng.choice(PARTS)}"
        dtype = rng.choice(DTYPES[:4] if rng.random() < 0.8 else DTYPES)
        out.append((key, dtype, [rng.randint(0, 12) for _ in range(rng.randint(0, 4))]))
    return out


def coherent_lora(rng: random.Random) -> list:
    """One LoRA module in the PEFT or kohya spelling, with shapes that mostly fit a tiny ViT's qkv [192, 64]."""
    rank = rng.randint(1, 4)
    up_rank = rank if rng.random() < 0.8 else rng.randint(0, 6)
    fan_in, fan_out = rng.choice([(64, 192), (64, 192), (64, 64), (3, 7)])
    dtype = rng.choice(["F32", "F16", "BF16"])
    if rng.random() < 0.5:
        module, down, up = "blocks.0.attn.qkv", "lora_A.weight", "lora_B.weight"
    else:
        module, down, up = "lora_unet_blocks_0_attn_qkv", "lora_down.weight", "lora_up.weight"
    out = [(f"{module}.{down}", dtype, [rank, fan_in]), (f"{module}.{up}", dtype, [fan_out, up_rank])]
    if rng.random() < 0.5:
        out.append((f"{module}.alpha", "F32", []))
    return out


def module_table(rng: random.Random, keys: list) -> str:
    modules = sorted({k.rsplit(".", 2)[0] for k in keys} | set(rng.sample(MODULES, rng.randint(0, 2))))
    table = {}
    for m in modules:
        entry = {"kind": rng.choice(["lora", "locon", "tucker", "loha", "lokr", "full", "ia3", 3]),
                 "rank": number(rng), "alpha": number(rng)}
        if rng.random() < 0.3:
            entry["slices"] = [[rng.randint(-2, 200) for _ in range(rng.randint(0, 3))] for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.2:
            entry["dora"] = True
        table[m] = rng.choice([entry, entry, entry, [entry], "x"])
    return json.dumps(table)


def metadata(rng: random.Random, keys: list) -> dict:
    meta: dict = {}
    choice = rng.randint(0, 5)
    if choice in (0, 1):
        meta["vislora.modules"] = module_table(rng, keys) if choice == 0 else rng.choice(JSONISH)
    if choice in (2, 3):
        fields = {"r": number(rng), "lora_alpha": number(rng)}
        if rng.random() < 0.5:
            patterns = ["qkv", "blocks\\.0\\.attn\\.qkv", "(", "*"]
            fields["alpha_pattern"] = ({rng.choice(patterns): number(rng)} if rng.random() < 0.8 else [1, 2])
        meta["lora_adapter_metadata"] = json.dumps(fields) if choice == 2 else rng.choice(JSONISH)
    if rng.random() < 0.3:
        meta["vislora.config"] = rng.choice(JSONISH + ['{"targets": "vit.attn", "rank": 2, "alpha": NaN}'])
    if rng.random() < 0.5:
        meta["format"] = "pt"
    return meta


def build(seed: int) -> bytes:
    """A safetensors file from a seed: a header (mostly well-formed, then mutated) and its data section."""
    rng = random.Random(seed)
    entries, offset, blobs = {}, 0, []
    for key, dtype, shape in (coherent_lora(rng) if rng.random() < 0.5 else loose_tensors(rng)):
        size = math.prod(shape) * SIZES.get(dtype, 4)
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        fill = rng.choice(["zeros", "ones", "nan", "random", "alpha"])
        if fill == "alpha" and dtype == "F32" and shape == []:
            blobs.append(struct.pack("<f", rng.choice([float("nan"), float("inf"), 3e38, 0.0, -2.0, 4.0])))
        elif fill == "random":
            blobs.append(rng.randbytes(size))
        else:
            value = {"zeros": 0.0, "ones": 0.5, "nan": float("nan")}.get(fill, 0.0)
            blobs.append(struct.pack("<f", value) * (size // 4) + b"\0" * (size % 4))
        offset += size
    header: dict = dict(entries)
    meta = metadata(rng, list(entries))
    if rng.random() < 0.5 and any(k.endswith("lora_A.weight") for k in entries):  # a vislora table that fits
        module = next(k for k in entries if k.endswith("lora_A.weight"))[: -len(".lora_A.weight")]
        rank = entries[f"{module}.lora_A.weight"]["shape"][:1] or [0]
        meta["vislora.modules"] = json.dumps({module: {"kind": "lora", "rank": rank[0], "alpha": number(rng)}})
    if meta:
        header["__metadata__"] = meta
    mutation = rng.randint(0, 9)
    if mutation == 0 and entries:  # a lie about offsets, shape or dtype
        key = rng.choice(sorted(entries))
        header[key][rng.choice(["data_offsets", "shape", "dtype"])] = rng.choice(
            [[rng.randint(-5, 10**12) for _ in range(rng.randint(0, 3))], "ab", None, 1.5, [1.5, 2]])
    text = json.dumps(header).encode()
    if mutation == 1:
        text = rng.choice([b"[" * 100_000, b'{"a":' + b"{" * 50_000, b"[]", b"{}", b'{"__metadata__": 1}',
                           b'{"a": 1, "a": 2}', text[: len(text) // 2], b'{"a": "\xff\xfe"}'])
    text += b" " * (-len(text) % 8)
    data = b"".join(blobs)
    length = len(text)
    if mutation == 2:
        length = rng.choice([0, 1, max(0, length - 1), length + 8, 2**63, 2**24 + 1])
    if mutation == 3:
        data = data[: rng.randint(0, len(data))] + rng.randbytes(rng.randint(0, 8))
    return struct.pack("<Q", length) + text + data


# Hypothesis draws a seed; `build` turns it into a file in pure Python (cheap enough for 10,000 cases).
FILES = st.integers(min_value=0, max_value=2**63 - 1).map(build)


def _typed_or_fine(call) -> bool:
    """True when `call` read the file, False when it refused with a VisloraError; anything else fails the test."""
    try:
        call()
        return True
    except VisloraError:
        return False


FAST = settings(max_examples=BYTES_CASES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@FAST
@given(FILES)
def test_random_headers_through_the_bytes_reader(data):
    FUZZ_COUNTS["bytes-path headers"] = FUZZ_COUNTS.get("bytes-path headers", 0) + 1
    ok = _typed_or_fine(lambda: formats.parse(data, "fuzz.safetensors", values=False))
    full = _typed_or_fine(lambda: formats.parse(data, "fuzz.safetensors"))
    FUZZ_COUNTS["bytes-path files read"] = FUZZ_COUNTS.get("bytes-path files read", 0) + full
    assert ok or not full  # whatever the header-only read refuses, the full read refuses too


@pytest.fixture(scope="module")
def model_state():
    vit = tiny_vit()
    return {"model": vit, "checksum": checksum(vit)}


@settings(max_examples=FILE_CASES, derandomize=True, deadline=None, database=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
@given(data=FILES)
def test_random_files_through_every_reader(tmp_path_factory, model_state, data):
    FUZZ_COUNTS["files through read_adapter, inspect, load_adapter"] = (
        FUZZ_COUNTS.get("files through read_adapter, inspect, load_adapter", 0) + 1)
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(data)
    _typed_or_fine(lambda: vislora.read_adapter(path))
    _typed_or_fine(lambda: describe(path))
    model = model_state["model"]
    if _typed_or_fine(lambda: vislora.load_adapter(model, path, strict=False)):
        model_state["model"] = model = tiny_vit()  # loaded: start the next case from a fresh model
        model_state["checksum"] = checksum(model)
    else:
        assert checksum(model) == model_state["checksum"]
        assert not any(isinstance(m, vislora.AdapterLayer) for m in model.modules())


def test_the_fuzz_ran_its_cases():
    """Runs after the two properties (file order): the counts CI prints are the counts that ran."""
    if "bytes-path headers" not in FUZZ_COUNTS:
        pytest.skip("the properties were not selected")
    assert FUZZ_COUNTS["bytes-path headers"] >= BYTES_CASES
    assert FUZZ_COUNTS["files through read_adapter, inspect, load_adapter"] >= FILE_CASES

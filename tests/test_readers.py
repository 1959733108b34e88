"""What every reader refuses, and how: deep JSON, non-finite or overflowing alphas and strengths, factors that
disagree on the rank, bad tool flags and outputs; header-only reads; temp files and file modes of writes."""

import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import checksum, tiny_vit
from inspect_probe import describe_in_fresh_process

import vislora
import vislora.tools.convert
import vislora.tools.resize
from vislora import AdapterFormatError, cli
from vislora.basics import TEMP_TAG, remove_stale_temps, write_bytes
from vislora.errors import AdapterCompatError, FactorShapeError, VisloraError
from vislora.formats import checks, container
from vislora.studio.catalogue import describe as studio_describe
from vislora.tools.inspect import describe as inspect_describe

QKV = "blocks.0.attn.qkv"


def _adapter(tmp_path, name="a.safetensors", **kw):
    vit = tiny_vit()
    vislora.inject(vit, "vit.attn", rank=2, init="random")
    return vislora.save_adapter(vit, tmp_path / name, **kw)


def _edit_metadata(path, edit):
    tensors, meta = container.read(path)
    tensors = {k: v.clone() for k, v in tensors.items()}
    edit(meta)
    container.write(path, tensors, meta)
    return path


def _diffusers_file(path, down, up, metadata=None):
    container.write(path, {f"{QKV}.lora_A.weight": down, f"{QKV}.lora_B.weight": up}, metadata or {"format": "pt"})
    return path


def _every_reader(path, tmp_path):
    """Run each reader on `path`; returns {reader: the exception it raised (None if it succeeded)}."""
    vit = tiny_vit()
    before = checksum(vit)
    out = {}

    def attempt(label, call):
        try:
            call()
            out[label] = None
        except BaseException as e:  # noqa: BLE001  (the test inspects what escaped)
            out[label] = e

    attempt("read_adapter", lambda: vislora.read_adapter(path))
    attempt("inspect", lambda: inspect_describe(path))
    attempt("load_adapter", lambda: vislora.load_adapter(vit, path))
    attempt("bank.load", lambda: vislora.AdapterBank(tiny_vit()).load("x", path))
    attempt("convert", lambda: vislora.tools.convert.convert(str(path), str(tmp_path / "c.safetensors"), "kohya"))
    from vislora.tools import common, merge, resize

    attempt("merge", lambda: merge.merge([(common.read(path), 1.0)]))
    attempt("resize", lambda: resize.resize(common.read(path), rank=1))
    facts = studio_describe("x", path)
    out["studio catalogue"] = None if facts.usable else AdapterFormatError(facts.error)
    if out["load_adapter"] is not None:
        assert checksum(vit) == before and not vislora.adapter_names(vit)  # a refused load changes nothing
    return out


def _assert_all_typed(results, category=None):
    for reader, error in results.items():
        assert isinstance(error, VisloraError), (reader, repr(error))
        if category and reader != "studio catalogue":
            assert error.category == category, (reader, str(error))


# -- bounded parsing ---------------------------------------------------------------------------------------
def test_deeply_nested_header_is_a_typed_error_in_every_reader(tmp_path):
    text = b'{"a":' + b"[" * 400_000
    text += b" " * (-len(text) % 8)
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    _assert_all_typed(_every_reader(path, tmp_path), "bad-header")
    assert cli.main(["inspect", str(path)]) == 2


def test_deeply_nested_metadata_is_a_typed_error(tmp_path):
    for key, fmt in (("vislora.modules", "vislora"), ("vislora.config", "vislora"),
                     ("lora_adapter_metadata", "diffusers")):
        path = _edit_metadata(_adapter(tmp_path, f"{key}.safetensors", format=fmt),
                              lambda m: m.__setitem__(key, "[" * 200_000 + "]" * 200_000))
        _assert_all_typed(_every_reader(path, tmp_path), "bad-metadata")


def test_deeply_nested_peft_config_is_a_typed_error(tmp_path):
    folder = tmp_path / "peft"
    _adapter(tmp_path, "peft", format="peft")
    (folder / "adapter_config.json").write_text('{"lora_alpha": ' + "[" * 400_000)
    _assert_all_typed(_every_reader(folder, tmp_path), "bad-metadata")


def test_json_depth_ignores_brackets_in_strings():
    assert checks.json_depth(b'{"a": "[[[[[[", "b": [[1]]}') == 3
    assert checks.json_depth(b'"\\"[[["') == 0
    with pytest.raises(AdapterFormatError, match="nests 40 levels"):
        checks.load_json("[" * 40 + "]" * 40, "x", "f")


# -- alphas, ranks and shapes against the tensors --------------------------------------------------------
BAD_ALPHAS = [float("nan"), float("inf"), -float("inf"), 1e30, 0.0, -1.0]


@pytest.mark.parametrize("alpha", BAD_ALPHAS)
def test_bad_alpha_in_the_vislora_module_table(tmp_path, alpha):
    def edit(meta):
        table = json.loads(meta["vislora.modules"])
        table[QKV]["alpha"] = alpha
        meta["vislora.modules"] = json.dumps(table)

    path = _edit_metadata(_adapter(tmp_path), edit)
    _assert_all_typed(_every_reader(path, tmp_path), "bad-alpha")


@pytest.mark.parametrize("alpha", BAD_ALPHAS)
def test_bad_alpha_in_lora_adapter_metadata(tmp_path, alpha):
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": alpha})}
    path = _diffusers_file(tmp_path / "d.safetensors", torch.randn(2, 64), torch.randn(192, 2), meta)
    _assert_all_typed(_every_reader(path, tmp_path), "bad-alpha")


@pytest.mark.parametrize("alpha", BAD_ALPHAS + ["two"])
def test_bad_alpha_in_adapter_config_json(tmp_path, alpha):
    folder = tmp_path / "peft"
    _adapter(tmp_path, "peft", format="peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["lora_alpha"] = alpha
    (folder / "adapter_config.json").write_text(json.dumps(config))
    _assert_all_typed(_every_reader(folder, tmp_path), "bad-alpha")


def test_an_alpha_tensor_that_is_not_finite(tmp_path):
    path = tmp_path / "k.safetensors"
    container.write(path, {f"{QKV}.lora_A.weight": torch.randn(2, 64), f"{QKV}.lora_B.weight": torch.randn(192, 2),
                           f"{QKV}.alpha": torch.tensor(float("nan"))})
    _assert_all_typed(_every_reader(path, tmp_path))


def test_factors_that_disagree_on_the_rank_are_refused_by_every_reader(tmp_path):
    path = _diffusers_file(tmp_path / "r.safetensors", torch.randn(8, 32), torch.randn(32, 7))
    results = _every_reader(path, tmp_path)
    _assert_all_typed(results, "shape-mismatch")
    assert isinstance(results["resize"], FactorShapeError)  # not a matmul RuntimeError
    assert isinstance(results["load_adapter"], AdapterCompatError)  # typed as the bad-file corpus expects
    assert "down [8, 32], up [32, 7]" in str(results["inspect"])
    assert _status(["resize", str(path), "--rank", "2", "-o", str(tmp_path / "o.safetensors")]) == 2


def test_a_good_file_passes_every_reader(tmp_path):
    results = _every_reader(_adapter(tmp_path), tmp_path)
    assert results == dict.fromkeys(results)


# -- strengths ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [float("nan"), float("inf"), 1e30, 1e39, -1e3])
def test_load_adapter_refuses_a_strength_that_is_not_finite_and_bounded(tmp_path, strength):
    path = _adapter(tmp_path)
    vit = tiny_vit()
    before = checksum(vit)
    with pytest.raises(ValueError, match="strength"):
        vislora.load_adapter(vit, path, strength=strength)
    assert checksum(vit) == before and not vislora.adapter_names(vit)


@pytest.mark.parametrize("weight", ["nan", "1e39", "inf", "-1e30"])
def test_merge_refuses_weights_that_are_not_finite_strengths(tmp_path, capsys, weight):
    path = _adapter(tmp_path)
    _one_line_refusal(capsys, ["merge", f"{path}:{weight}", "-o", str(tmp_path / "m.safetensors")], "strength")
    assert not (tmp_path / "m.safetensors").exists()


def test_generate_refuses_an_unbounded_lora_strength(tmp_path):
    from vislora.diffusion.generate import parse_lora

    path = _adapter(tmp_path)
    for tail in ("1e30", "nan", "-inf"):
        with pytest.raises(ValueError, match="--lora"):
            parse_lora(f"{path}:{tail}")
    assert parse_lora(f"{path}:0.7").strength == 0.7


# -- tools -------------------------------------------------------------------------------------------------
def test_resize_and_convert_to_vislora_on_vislora_and_diffusers_files(tmp_path):
    for fmt in ("vislora", "diffusers"):
        src = _adapter(tmp_path, f"{fmt}.safetensors", format=fmt)
        out = tmp_path / f"{fmt}-resized.safetensors"
        assert cli.main(["resize", str(src), "--rank", "1", "-o", str(out)]) == 0
        assert {w.rank for w in vislora.read_adapter(out).modules.values()} == {1}
        assert cli.main(["convert", str(src), str(tmp_path / f"{fmt}-again.safetensors"), "--to", "vislora"]) == 0
        a, b = vislora.read_adapter(src), vislora.read_adapter(tmp_path / f"{fmt}-again.safetensors")
        for name, w in a.modules.items():
            assert math.isclose(b.modules[name].scale, w.scale)
            for f, t in w.factors.items():
                assert torch.equal(b.modules[name].factors[f], t)


def _checkpoints(tmp_path, **tuned_edits):
    base = {"fc.weight": torch.randn(16, 8), "conv.weight": torch.randn(4, 3, 3, 3)}
    tuned = {k: v + 0.1 * torch.randn_like(v) for k, v in base.items()}
    tuned.update(tuned_edits)
    container.write(tmp_path / "base.safetensors", base)
    container.write(tmp_path / "tuned.safetensors", tuned)
    return ["extract", "--base", str(tmp_path / "base.safetensors"), "--tuned", str(tmp_path / "tuned.safetensors"),
            "-o", str(tmp_path / "x.safetensors")]


def _status(argv):
    """cli.main's exit status, whether it returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def _one_line_refusal(capsys, argv, *words):
    assert _status(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_extract_names_a_shape_mismatched_weight(tmp_path, capsys):
    argv = _checkpoints(tmp_path, **{"fc.weight": torch.randn(16, 9)})
    _one_line_refusal(capsys, argv + ["--rank", "2"], "'fc.weight'", "[16, 8]", "[16, 9]", "shape-mismatch")


def test_extract_refuses_non_finite_weights(tmp_path, capsys):
    bad = torch.randn(16, 8)
    bad[3, 3] = float("nan")
    argv = _checkpoints(tmp_path, **{"fc.weight": bad})
    _one_line_refusal(capsys, argv + ["--rank", "2"], "'fc.weight'", "non-finite", "tuned.safetensors")


@pytest.mark.parametrize("flag", [["--rank", "0"], ["--rank", "-3"], ["--energy", "0"], ["--energy", "1.5"],
                                  ["--energy", "nan"], ["--rank", "two"]])
def test_extract_and_resize_refuse_bad_ranks_and_energies(tmp_path, capsys, flag):
    argv = _checkpoints(tmp_path)
    _one_line_refusal(capsys, argv + flag, flag[0])
    src = _adapter(tmp_path)
    _one_line_refusal(capsys, ["resize", str(src), *flag, "-o", str(tmp_path / "r.safetensors")], flag[0])
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "r.safetensors").exists()
    with pytest.raises(ValueError):
        vislora.tools.resize.resize(vislora.read_adapter(src), rank=0)


def test_convert_refuses_a_folder_target_and_peft_onto_a_file(tmp_path, capsys):
    src = _adapter(tmp_path)
    (tmp_path / "folder").mkdir()
    _one_line_refusal(capsys, ["convert", str(src), str(tmp_path / "folder"), "--to", "kohya"], "is a folder")
    _one_line_refusal(capsys, ["convert", str(src), str(src), "--to", "peft"], "is a file", "--to peft")
    assert vislora.read_adapter(src).format == "vislora"  # untouched


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    path = _adapter(tmp_path)
    run = subprocess.run(f"{sys.executable} -m vislora.cli inspect {path} | head -c 1 >/dev/null", shell=True,
                         capture_output=True, text=True)
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr


# -- header-only reading -----------------------------------------------------------------------------------
def _large_header_valid_file(path, gigabytes=1.0, alpha=64.0):
    """A vislora adapter of `gigabytes` GB written as header + a sparse (zero) data section, in milliseconds."""
    per = 4096 * 64 * 4
    n = math.ceil(gigabytes * 1e9 / (2 * per))
    table, header, offset = {}, {}, 0
    for i in range(n):
        module = f"blocks.{i}.mlp.fc"
        table[module] = {"kind": "lora", "rank": 64, "alpha": alpha}
        for key, shape in ((f"{module}.lora_A.weight", [64, 4096]), (f"{module}.lora_B.weight", [4096, 64])):
            header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + per]}
            offset += per
    header = {"__metadata__": {"format": "pt", "vislora.modules": json.dumps(table)}, **header}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    return path


def test_inspect_reads_only_the_header_of_a_1gb_file(tmp_path):
    path = _large_header_valid_file(tmp_path / "big.safetensors")
    small = _large_header_valid_file(tmp_path / "small.safetensors", gigabytes=0.001)
    assert path.stat().st_size > 1e9
    out = describe_in_fresh_process(path, small)
    print(f"inspect on a {path.stat().st_size / 1e9:.2f} GB file: {out['seconds']:.3f} s, RSS +{out['grew_mb']:.0f} MB")
    assert out["info"]["parameters"] * 4 == path.stat().st_size - 8 - struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert out["seconds"] < 1.0
    assert out["grew_mb"] < 100  # the file is 1,000 MB


def test_a_refused_large_file_is_refused_from_its_header(tmp_path):
    """A 1 GB file whose header lies about a factor is refused before any data is read."""
    path = _large_header_valid_file(tmp_path / "big.safetensors", alpha=float("nan"))
    start = time.perf_counter()
    with pytest.raises(AdapterFormatError, match="bad-alpha"):
        vislora.load_adapter(tiny_vit(), path)
    assert time.perf_counter() - start < 1.0


def test_loading_maps_the_file_instead_of_copying_it(tmp_path):
    path = _adapter(tmp_path)
    tensors, _ = container.read(path)
    t = next(iter(tensors.values()))
    t += 1  # copy-on-write: the file never changes
    assert container.read(path)[0].keys() == tensors.keys()
    assert not torch.equal(container.read(path)[0][next(iter(tensors))], t)


def test_written_bytes_are_deterministic_whatever_the_metadata_order():
    tensors = {"b": torch.ones(3), "a": torch.zeros(2, dtype=torch.float16), "c": torch.arange(4)}
    meta = {f"k{i}": str(i) for i in range(20)}
    first = container.serialize(tensors, meta)
    for _ in range(5):
        assert container.serialize(dict(reversed(tensors.items())), dict(reversed(meta.items()))) == first
    import safetensors.torch

    assert safetensors.torch.load(first)["c"].tolist() == [0, 1, 2, 3]


# -- atomic writes: temp names, stale temps, modes --------------------------------------------------------
def test_written_files_follow_the_umask(tmp_path):
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            write_bytes(tmp_path / f"f{mask}", b"x")
            path = _adapter(tmp_path, f"a{mask}.safetensors")
        finally:
            os.umask(old)
        assert (tmp_path / f"f{mask}").stat().st_mode & 0o777 == mode
        assert path.stat().st_mode & 0o777 == mode


def test_a_killed_write_leaves_a_recognisable_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "big.bin"
    writer = textwrap.dedent(f"""
        import time
        from vislora.basics import write_bytes
        def chunks():
            yield b"x" * 1000
            print("writing", flush=True)
            time.sleep(60)
            yield b"y"
        write_bytes({str(target)!r}, chunks())
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    live = [p for p in tmp_path.iterdir() if TEMP_TAG in p.name]
    assert len(live) == 1 and live[0].name.startswith(".big.bin" + TEMP_TAG + str(proc.pid))
    write_bytes(tmp_path / "other", b"1")
    assert live[0].exists()  # its writer is alive: kept
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert live[0].exists() and not target.exists()
    write_bytes(tmp_path / "other", b"2")
    assert not live[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_only_dead_writers_temps_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    stale = tmp_path / f".a.safetensors{TEMP_TAG}{dead}-deadbeef"
    mine = tmp_path / f".b.safetensors{TEMP_TAG}{os.getpid()}-cafe0123"
    unrelated = tmp_path / ".a.safetensors.tmp"
    for p in (stale, mine, unrelated):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [stale]
    assert mine.exists() and unrelated.exists()

"""The studio without a server: the folder listing's path checks, a busy port, a model folder that does not
load, and the core importing without gradio."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from studio_fixtures import free_port
from test_bank import one_thread  # noqa: F401  (autouse: one thread for tiny models)
from vislora.studio.paths import AdapterFolder, PathRefused


def test_folder_lists_only_its_own_files(tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"x")
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    (folder / "link.safetensors").symlink_to(secret)
    listed = AdapterFolder(folder)
    assert listed.resolve("a.safetensors") == folder.resolve() / "a.safetensors"
    for key in ("../secret.safetensors", str(secret), "link.safetensors", "/etc/passwd", "", None, "a.safetensors/.."):
        with pytest.raises(PathRefused):
            listed.resolve(key)
    assert {f.key: bool(f.refused) for f in listed.files} == {"a.safetensors": False, "link.safetensors": True}


def test_port_in_use_is_said_before_loading(tmp_path, capsys):
    from vislora.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["studio", "--model", str(tmp_path / "nothing"), "--adapters", str(tmp_path), "--port", str(port)])
    assert code == 2 and f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_model_folder_that_does_not_load(tmp_path, capsys):
    from vislora.cli import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{not json")
    code = main(["studio", "--model", str(tmp_path / "model"), "--adapters", str(tmp_path), "--port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --model") and "does not load" in err


@pytest.mark.parametrize("flags, message", [
    (["--port", "99999"], "'99999' is not a port; give a number from 1 to 65535"),
    (["--port", "0"], "'0' is not a port"),
    (["--threads", "0"], "'0': give a whole number of CPU threads, 1 or more"),
    (["--out", "{tmp}/file"], "--out {tmp}/file: a file is there, not a folder"),
    (["--out", "{tmp}/file/sub"], "--out {tmp}/file/sub: cannot make the folder"),
    (["--out", "{tmp}/readonly"], "--out {tmp}/readonly: cannot write in the folder"),
])
def test_bad_flags_are_one_line_before_anything_starts(tmp_path, capsys, monkeypatch, flags, message):
    """A bad --port, --threads or --out is refused in one line, exit 2, before gradio or the model is touched
    (--model names nothing: reaching the model would say so instead)."""
    from vislora.cli import main
    from vislora.studio import paths

    (tmp_path / "file").write_text("x")
    (tmp_path / "readonly").mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes into a 0555 folder: stand in a refused write for the read-only folder
        real = paths.tempfile.TemporaryFile

        def refuse(*a, dir=None, **k):
            if str(dir).endswith("readonly"):
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(paths.tempfile, "TemporaryFile", refuse)
    flags = [f.format(tmp=tmp_path) for f in flags]
    try:
        code = main(["studio", "--model", str(tmp_path / "nothing"), "--adapters", str(tmp_path), *flags])
    except SystemExit as e:  # argparse's refusal of a flag's type
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert "--model" not in err.strip().splitlines()[-1]  # refused before the model was looked at


def test_guard_answers_local_names_and_its_own_origin():
    from starlette.datastructures import Headers

    from vislora.studio.guard import accepted_hosts, foreign, is_loopback

    assert accepted_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert accepted_hosts("0.0.0.0", ["MyBox.lan"]) == ["localhost", "127.0.0.1", "[::1]", "mybox.lan"]
    assert accepted_hosts("fe80::1")[-1] == "[fe80::1]" and accepted_hosts("192.168.1.5")[-1] == "192.168.1.5"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    own = {"host": "127.0.0.1:7860"}
    assert foreign(Headers(own), "POST") == ""  # curl, Python clients: no Origin
    assert foreign(Headers({**own, "origin": "http://127.0.0.1:7860"}), "POST") == ""
    assert foreign(Headers({**own, "sec-fetch-site": "cross-site"}), "GET") == ""  # a link followed to the page
    for origin in ("http://evil.example.com", "http://127.0.0.1:8888", "null", "file://", "http://localhost:7860"):
        assert "answers its own page only" in foreign(Headers({**own, "origin": origin}), "GET"), origin
    assert foreign(Headers({**own, "sec-fetch-site": "same-site"}), "POST")


def test_core_imports_without_gradio(tmp_path):
    """The core never imports gradio; the studio names the extra when it is missing."""
    block = tmp_path / "gradio"
    block.mkdir()
    (block / "__init__.py").write_text("raise ImportError('gradio is not installed')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    code = ("import sys, vislora, vislora.cli; assert 'gradio' not in sys.modules; "
            "sys.exit(vislora.cli.main(['studio', '--model', 'm', '--adapters', '.']))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pip install 'vislora[studio]'" in done.stderr, done.stderr



def test_mix_becomes_the_bank_spec():
    from vislora.studio.mix import Mix

    unet_only = ["unet.down_blocks.0.attentions.0.proj_in", "unet.up_blocks.1.attentions.0.proj_in"]
    assert Mix(False, 0.7).spec(unet_only) == 0.0
    assert Mix(True, 0.7).spec(unet_only) == 0.7  # a plain number, as `--lora FILE:0.7`
    # sections the adapter has no layers in are left out (the bank refuses keys that match nothing)
    assert Mix(True, 0.7, text_encoder=0.0, mid=0.5, up=0.25).spec(unet_only) == {"*": 0.7, "unet.up": 0.25}
    assert Mix(True, 1.0, lbw="lbw:OUTD").spec(unet_only) == {"*": 1.0, "lbw": "OUTD"}


FLUX_PATHS = ["transformer.transformer_blocks.0.attn.to_q", "transformer.single_transformer_blocks.0.proj_mlp",
              "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]


def test_mix_on_a_transformer_becomes_the_bank_spec():
    from vislora.studio.mix import Mix, lbw_hint, sections_for

    assert sections_for(FLUX_PATHS) == ["text_encoder", "transformer", "double", "single"]
    assert Mix(True, 0.8).spec(FLUX_PATHS) == 0.8  # every factor unchanged: a plain number
    assert Mix(True, 0.8, single=0.25).spec(FLUX_PATHS) == {"*": 0.8, "single": 0.25}
    assert Mix(True, 1.0, transformer=0.5, double=0.0).spec(FLUX_PATHS) == {"*": 1.0, "transformer": 0.5, "double": 0.0}
    doubles_only = FLUX_PATHS[:1]
    # the UNet's sections and the single blocks this adapter has no layers in are left out
    assert Mix(True, 0.8, single=0.0, up=0.5, unet=0.0).spec(doubles_only) == {"*": 0.8}
    assert Mix(True, 0.8, single=0.0, double=2.0).spec(doubles_only) == {"*": 0.8, "double": 2.0}
    # and a UNet adapter never gets the transformer's keys
    unet_only = ["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert sections_for(unet_only) == ["unet", "up"]
    assert Mix(True, 0.7, transformer=0.0, double=0.0, single=0.0).spec(unet_only) == {"*": 0.7}
    assert "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1" in lbw_hint(None)
    assert lbw_hint((2, 3)) == "lbw: 6 values, BASE then 2 double (joint) blocks, then 3 single blocks (e.g. 1,1,1,0,0,0)"
    assert lbw_hint((4, 0)).startswith("lbw: 5 values, BASE then 4 double (joint) blocks (e.g. 1,1,1,1,1)")


def test_double_factor_on_a_flux_pipeline_draws_the_hand_set_spec(tmp_path, monkeypatch):
    """A request with double=0 draws what the bank draws with {"double": 0} set by hand, which is neither the
    default mix nor the adapter switched off (the adapter's single blocks still act); the page shows the
    transformer's sliders only and labels lbw with its block vector; the export carries the spec."""
    import numpy as np

    import vislora
    from dit_pipelines import save, strong_adapter
    from vislora.diffusion.generate import Source
    from vislora.studio.app import build
    from vislora.studio.generation import generate_image, load_pipeline
    from vislora.studio.mix import Mix, Request
    from vislora.studio.state import Studio

    folder = save("FluxPipeline", tmp_path)
    pipe, _ = load_pipeline(Source(str(folder)))
    (tmp_path / "adapters").mkdir()
    adapter = strong_adapter(pipe, tmp_path / "adapters" / "style.safetensors")

    studio = Studio(folder, tmp_path / "adapters", tmp_path / "out")
    assert studio.controls("style.safetensors") == (["transformer", "double", "single"],
                                                     "lbw: 3 values, BASE then 1 double (joint) blocks, then 1 single "
                                                     "blocks (e.g. 1,1,0)")
    request = Request("a red digit", seed=0, steps=2, guidance=3.5, width=32, height=32,
                      mixes={"style.safetensors": Mix(True, 1.0, double=0.0)})
    no_doubles = studio.render(request)
    assert studio.spec("style.safetensors", request.mixes["style.safetensors"]) == {"*": 1.0, "double": 0.0}
    default = studio.render(Request(**{**request.__dict__, "mixes": {"style.safetensors": Mix(True, 1.0)}}))
    off = studio.render(Request(**{**request.__dict__, "mixes": {}}))

    pipe, _ = load_pipeline(Source(str(folder)))  # a fresh copy of the base
    bank = vislora.AdapterBank(pipe)
    bank.load("style", adapter, strength={"double": 0})
    by_hand = generate_image(pipe, request)
    assert no_doubles.image.tobytes() == by_hand.tobytes()
    pixels = [np.asarray(s.image, dtype=float) for s in (no_doubles, default, off)]
    assert np.abs(pixels[0] - pixels[1]).mean() > 1.0 and np.abs(pixels[0] - pixels[2]).mean() > 1.0

    studio.render(request)  # the shown image, for the export
    from vislora.studio.handlers import Handlers
    import gradio as gr

    cmd, code, files, note = Handlers(studio, gr).export()
    assert "per-section strengths of style.safetensors" in cmd
    assert "strength={'*': 1.0, 'double': 0.0}" in code
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # build sets it; restored after the test
    sliders = {c.elem_id: c.visible for c in build(studio).blocks.values() if c.elem_id and "-style" in c.elem_id}
    hidden = {k.split("-")[0] for k, v in sliders.items() if v is False}
    assert hidden == {"unet", "text_encoder", "down", "mid", "up"}, sliders

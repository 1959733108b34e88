"""The studio without a server: the folder listing's path checks, a busy port, a model folder that does not
load, and the core importing without gradio."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

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
    code = main(["studio", "--model", str(tmp_path / "model"), "--adapters", str(tmp_path), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --model") and "does not load" in err


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

"""The studio without a browser: path safety over HTTP and in the studio's own lookups, bad values from the
page, a busy port, a model folder that does not load, and the core importing without gradio."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from vislora.studio.mix import Mix, Request, StudioInputError
from vislora.studio.paths import AdapterFolder, PathRefused


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


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


def test_http_never_serves_files_outside_the_outputs(studio_server, tmp_path):
    studio, url = studio_server
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    link = studio.folder.root / "link_out.safetensors"
    link.symlink_to(secret)
    try:
        tries = [f"../../../../{secret}", str(secret), "/etc/passwd", str(link),
                 str(studio.folder.root / "bold.safetensors"), f"{studio.outputs.root}/../{secret.name}", f"{studio.outputs.root}/.gradio/../../../{secret}"]
        for t in tries:
            for route in ("/gradio_api/file=", "/file="):
                for quoted in (t, urllib.parse.quote(t, safe="")):
                    assert _status(url + route + quoted) in (400, 403, 404), (route, quoted)
    finally:
        link.unlink()
    assert _status(url + "/") == 200


def test_requests_name_files_never_paths(studio_server):
    studio, _ = studio_server
    request = Request("a digit", steps=2)
    for key in ("../bold.safetensors", str(studio.folder.root / "bold.safetensors"), "/etc/passwd"):
        with pytest.raises(StudioInputError):
            studio.render(replace(request, mixes={key: Mix(True, 0.5)}))
        with pytest.raises(StudioInputError):
            studio.grid(request, (key, [0.0, 1.0]))


@pytest.mark.parametrize("bad, message", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(mixes={"bold.safetensors": Mix(True, math.nan)}), "finite"),
    (dict(mixes={"bold.safetensors": Mix(True, 1.0, unet=math.inf)}), "finite"),
    (dict(mixes={"bold.safetensors": Mix(True, 5.0)}), "outside"),
    (dict(mixes={"corrupt.safetensors": Mix(True, 1.0)}), "cannot be switched on"),
    (dict(mixes={"bold.safetensors": Mix(True, 1.0, lbw="1,2,3")}), "lbw"),
    (dict(steps=0), "steps"), (dict(width=30), "multiple of 8"), (dict(guidance=math.nan), "guidance"),
])
def test_bad_values_change_nothing(studio_server, bad, message):
    studio, _ = studio_server
    before = (dict(studio.bank.strengths), studio.bank.fused, studio.last)
    with pytest.raises(StudioInputError, match=message):
        studio.render(replace(Request("a digit", steps=2), **bad))
    assert (dict(studio.bank.strengths), studio.bank.fused, studio.last) == before


def test_stale_render_stops(studio_server):
    studio, _ = studio_server
    ticket = studio.bump()
    steps = []

    def on_step(i, n):
        steps.append(i)
        studio.bump()  # a slider moved while this image was being drawn

    assert studio.render(Request("a digit", steps=5), on_step=on_step, ticket=ticket) is None
    assert steps == [1]


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

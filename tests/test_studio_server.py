"""A running studio: its page in a real headless Chromium (Debian's), driven by Playwright (sliders make new
images, the image equals the exported command's, fused equals unfused, refused files stay refused, the grid),
and its HTTP side and state without the browser (path traversal, bad values, stale renders).

VISLORA_STUDIO_SCREENSHOTS=docs writes the README's screenshots of the page while the tests run.
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from studio_fixtures import CHROMIUM, CHROMIUM_ARGS, adapter_folder, base_folder, free_port
from vislora.studio.mix import Mix, Request, StudioInputError

browser = pytest.mark.skipif(not CHROMIUM.exists(),
                             reason="Debian's chromium is not installed (.ci/run installs it)")
SHOTS = os.environ.get("VISLORA_STUDIO_SCREENSHOTS")
SHOTS_DIR = Path(SHOTS).resolve() if SHOTS else None  # named before the fixture moves into a clean folder
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):
    """One studio page (digits base or a tiny one, bold + italic + three bad files), served in this process on a
    free port with one torch thread (two threads on two busy cores spin-wait for seconds per image).
    Yields (studio, url)."""
    pytest.importorskip("gradio")
    from vislora.studio import serve
    from vislora.studio.state import Studio

    root = tmp_path_factory.mktemp("studio")
    base = base_folder(root)
    folder = adapter_folder(root, base)
    threads, cwd = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    if SHOTS:  # the screenshots show the page as `vislora studio --model samples/digits_sd --adapters adapters`
        SHOTS_DIR.mkdir(parents=True, exist_ok=True)
        (root / "samples").symlink_to(base.parent, target_is_directory=True)
        os.chdir(root)
        base, folder = Path("samples") / base.name, folder.relative_to(root)
    studio = Studio(base, folder, root / "out", live_seconds=60.0)  # previews whatever the machine's load
    port = free_port()
    page = serve(studio, "127.0.0.1", port, block=False)
    yield studio, f"http://127.0.0.1:{port}"
    page.close()
    os.chdir(cwd)
    torch.set_num_threads(threads)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def page(studio_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    _, url = studio_server
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = chromium.new_page(viewport={"width": 1280, "height": 1000})
        tab.asked = []  # every URL the page requests
        tab.on("request", lambda r: tab.asked.append(r.url))
        tab.goto(url)
        tab.wait_for_selector("#generate")
        _fill(tab, "#steps", "6")
        yield tab
        chromium.close()


def _id(key: str) -> str:
    return key.replace(".", "\\.")


def _fill(tab, selector: str, value: str) -> None:
    """Type a value into a field and press Enter; again if the page re-rendered the field meanwhile (an
    accordion that has just opened draws its children after a moment)."""
    box = tab.locator(f"{selector} input[type=number], {selector} textarea, {selector} input[type=text]").first
    for _ in range(5):
        box.fill(value)
        box.press("Enter")
        tab.wait_for_timeout(200)
        if box.input_value() == value:
            return
    raise AssertionError(f"{selector} does not keep {value!r}")


def _src(tab) -> str | None:
    return tab.eval_on_selector("#preview", "e => { const i = e.querySelector('img'); return i ? i.src : null }")


def _image(tab, src: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(tab.request.get(src).body())).convert("RGB")).astype(np.int16)


def _number(tab) -> int:
    """The count in the status line ("image N: done in ..."), 0 before the first image."""
    text = tab.inner_text("#status")
    return int(text.split(":")[0].split()[1]) if text.startswith("image ") else 0


def _next_image(tab, action) -> np.ndarray:
    """Do `action`, then wait for the studio's next image (the status counts them) and read it from the page."""
    before = _number(tab)
    action()
    tab.wait_for_function("n => { const t = document.querySelector('#status').innerText;"
                          " return t.startsWith('image ') && parseInt(t.split(':')[0].split(' ')[1]) > n }",
                          arg=before, timeout=WAIT_MS)
    return _image(tab, _src(tab))


def _shot(tab, name: str, studio) -> None:
    """A full-page screenshot once every queued preview has been drawn and shown."""
    if SHOTS:
        for _ in range(100):
            tab.wait_for_timeout(300)
            if not studio._lock.locked():
                break
        tab.wait_for_timeout(1000)
        tab.screenshot(path=str(SHOTS_DIR / name), full_page=True)


@browser
def test_refused_files_are_shown_and_the_rest_work(page, studio_server):
    studio, _ = studio_server
    text = page.inner_text("body")
    for key, category in (("corrupt.safetensors", "[bad-header]"), ("pickled.pt", "[pickle]"),
                          ("other_width.safetensors", "[shape-mismatch]")):
        row = page.locator(f"#row-{_id(key)}").first
        assert "refused" in row.get_attribute("class") and category in row.inner_text()
        assert page.locator(f"#on-{_id(key)} input").is_disabled()
    for key in ("bold.safetensors", "italic.safetensors"):
        assert "lora rank" in page.locator(f"#row-{_id(key)}").first.inner_text()
        assert page.locator(f"#on-{_id(key)} input").is_enabled()
    assert "refused" in text and sorted(studio.names) == ["bold.safetensors", "italic.safetensors"]


@browser
def test_slider_moves_make_new_images(page, studio_server):
    studio, _ = studio_server
    plain = _next_image(page, lambda: page.click("#generate"))
    bold = _next_image(page, lambda: page.click(f"#on-{_id('bold.safetensors')} input"))
    assert np.abs(bold - plain).max() > 8  # the adapter changes the picture
    slider = page.locator(f"#strength-{_id('bold.safetensors')} input[type=range]")
    slider.focus()
    weaker = _next_image(page, lambda: [slider.press("ArrowLeft") for _ in range(6)])  # 1.0 -> 0.7
    assert np.abs(weaker - bold).max() > 0
    assert page.locator(f"#strength-{_id('bold.safetensors')} input[type=number]").input_value() == "0.7"
    _next_image(page, lambda: page.click(f"#on-{_id('italic.safetensors')} input"))
    assert "s/image" in page.inner_text("#timing")
    _shot(page, "studio.png", studio)


@browser
def test_page_image_equals_the_exported_command(page, tmp_path):
    from vislora.cli import main

    page.click("text=Export")
    page.click("#export-go")
    page.wait_for_function("() => document.querySelector('#export-command').innerText.includes('vislora generate')",
                           timeout=WAIT_MS)
    command = page.inner_text("#export-command .cm-content")
    words = shlex.split(command.split("\n#")[0])
    assert words[:2] == ["vislora", "generate"] and words.count("--lora") == 2
    out = tmp_path / "cli.png"
    words[words.index("--out") + 1] = str(out)
    assert main(words[1:]) == 0
    from PIL import Image

    cli = np.asarray(Image.open(out).convert("RGB")).astype(np.int16)
    shown = _image(page, _src(page))
    assert cli.shape == shown.shape and np.array_equal(cli, shown)  # pixel for pixel


@browser
def test_fused_matches_unfused(page, studio_server):
    studio, _ = studio_server
    unfused = _image(page, _src(page))
    fused = _next_image(page, lambda: page.click("#fused input"))
    assert studio.bank.fused
    assert np.abs(fused - unfused).max() <= 2  # fp32 merge vs unmerged sums: at most 2 of 255 apart
    text = page.inner_text("#timing")
    assert "fused:" in text and "unfused:" in text
    _next_image(page, lambda: page.click("#fused input"))
    assert not studio.bank.fused


@browser
def test_bad_values_give_a_message_and_change_nothing(page, studio_server):
    studio, _ = studio_server
    before, shot = _src(page), studio.last
    _fill(page, "#prompt", "")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('error')", timeout=WAIT_MS)
    assert "prompt is empty" in page.inner_text("#status")
    assert _src(page) == before and studio.last is shot
    _fill(page, "#prompt", "a handwritten digit three")


@browser
def test_the_page_asks_nothing_of_other_servers(page, studio_server):
    _, url = studio_server
    assert page.asked and all(u.startswith((url, "data:", "blob:")) for u in page.asked), \
        sorted({u for u in page.asked if not u.startswith(url)})


@browser
def test_xy_grid_is_one_labelled_sheet(page, studio_server):
    studio, _ = studio_server
    shown = studio.last
    page.click("text=X/Y grid")
    page.wait_for_selector("#grid-go", state="visible")
    _fill(page, "#grid-x-values", "0,1")
    page.locator("#grid-y input").first.click()
    page.locator("#grid-y li", has_text="italic.safetensors").first.click()
    _fill(page, "#grid-y-values", "0,1")
    page.click("#grid-go")
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('grid:')", timeout=WAIT_MS)
    assert page.inner_text("#status").startswith("grid: 2 x 2"), page.inner_text("#status")
    src = page.eval_on_selector("#grid-sheet", "e => e.querySelector('img').src")
    sheet = _image(page, src)
    w, h = shown.image.size
    assert sheet.shape[0] > 2 * h and sheet.shape[1] > 2 * w  # 2 x 2 cells plus labels
    assert studio.last is shown, (shown.number, studio.last.number)  # the grid leaves the shown image (and what Export writes) alone
    _shot(page, "studio_grid.png", studio)


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


def _ask(url: str, method: str = "GET", data: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    """Status and body of one request; header names written with '_' for '-' (Sec_Fetch_Site=...)."""
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _multipart(size: int) -> tuple[bytes, str]:
    """An upload form with one file of `size` bytes, and its Content-Type."""
    head = (b'--bound\r\nContent-Disposition: form-data; name="files"; filename="a.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    return head + b"x" * size + b"\r\n--bound--\r\n", "multipart/form-data; boundary=bound"


def test_a_foreign_host_is_refused_on_every_route(studio_server):
    """DNS rebinding: a page on attacker.example made to resolve to 127.0.0.1 sends `Host: attacker.example`.
    The page, the API (generate, export) and the file route all answer 400 and run nothing."""
    studio, url = studio_server
    port = url.rsplit(":", 1)[1]
    studio.render(Request("a digit", steps=2, mixes={"bold.safetensors": Mix(True, 0.5)}))
    status, body = _ask(url + "/gradio_api/call/export", "POST", b'{"data": []}', Content_Type="application/json")
    event = json.loads(body)["event_id"]
    _, events = _ask(f"{url}/gradio_api/call/export/{event}")  # the export's result, as a client reads it
    done = json.loads(events.decode().split("event: complete\ndata: ", 1)[1].split("\n", 1)[0])
    (mix,) = [f for f in done[2] if f["url"].endswith(".safetensors")]
    served = mix["url"].split(url, 1)[1]
    assert _ask(url + served) == (200, Path(mix["path"]).read_bytes())  # the mix, to the page's own Host
    count, written = studio._count, set(studio.outputs.root.iterdir())
    call = b'{"data": []}'
    for host in ("attacker.example", f"attacker.example:{port}", f"localhost.attacker.example:{port}"):
        for route, method, data in (("/", "GET", None), ("/config", "GET", None), (served, "GET", None),
                                    ("/gradio_api/info", "GET", None), ("/gradio_api/call/generate", "POST", call),
                                    ("/gradio_api/call/export", "POST", call)):
            status, body = _ask(url + route, method, data, Host=host, Content_Type="application/json")
            assert status == 400 and b"safetensors" not in body, (host, route, status)
    assert studio._count == count and set(studio.outputs.root.iterdir()) == written
    for host in ("localhost", "127.0.0.1", "[::1]"):  # this machine's names, with or without the port
        assert _ask(url + "/config", Host=f"{host}:{port}")[0] == 200
        assert _ask(url + "/config", Host=host)[0] == 200


def test_a_cross_origin_post_or_upload_is_refused(studio_server):
    """A form on another site (or another local port) that posts to the studio: 403 before anything runs;
    the same request from the page's own origin runs."""
    studio, url = studio_server
    gradio_cache = studio.outputs.root / ".gradio"
    before = sorted(gradio_cache.rglob("*"))
    form, kind = _multipart(100)
    other_port = url.rsplit(":", 1)[0] + ":1"  # another local server's page
    for headers in ({"Origin": "http://evil.example.com"}, {"Origin": "null"}, {"Origin": other_port},
                    {"Sec_Fetch_Site": "cross-site"}):
        status, body = _ask(url + "/gradio_api/call/export", "POST", b'{"data": []}', Content_Type="application/json",
                            **headers)
        assert status == 403 and body.startswith(b"refused:"), (headers, status)
        assert _ask(url + "/gradio_api/upload", "POST", form, Content_Type=kind, **headers)[0] == 403
    assert sorted(gradio_cache.rglob("*")) == before  # nothing landed
    status, body = _ask(url + "/gradio_api/call/bump", "POST", b'{"data": []}', Content_Type="application/json",
                        Origin=url)  # bump: the one call that draws and writes nothing
    assert status == 200 and b"event_id" in body
    assert _ask(url + "/gradio_api/upload", "POST", form, Content_Type=kind, Origin=url)[0] == 200


def test_an_oversize_upload_is_refused(studio_server):
    """gradio's max_file_size: over the cap is 413, whatever the origin; the page itself uploads nothing."""
    _, url = studio_server
    form, kind = _multipart(1024 * 1024 + 1)
    status, body = _ask(url + "/gradio_api/upload", "POST", form, Content_Type=kind, Origin=url)
    assert status == 413 and b"maximum allowed size" in body


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


@pytest.mark.filterwarnings("ignore:strength of 'bold'")  # a 17-value lbw list leaves OUT02 at 0, as A1111 does
def test_section_factors_reach_the_bank(studio_server):
    studio, _ = studio_server
    request = Request("a handwritten digit seven", steps=3)
    images = {}
    for label, mix in {"plain": Mix(True, 1.0), "up off": Mix(True, 0.8, up=0.0, text_encoder=0.5),
                       "lbw": Mix(True, 1.0, lbw="OUTD")}.items():
        shot = studio.render(replace(request, mixes={"bold.safetensors": mix}))
        images[label] = np.asarray(shot.image).astype(np.int16)
        if label == "up off":  # bold has no text-encoder layers: that factor is left out of the spec
            per_layer = studio.bank.layer_strengths("bold")
            assert {v for k, v in per_layer.items() if k.startswith("unet.up_blocks.")} == {0.0}
            assert {v for k, v in per_layer.items() if k.startswith("unet.down_blocks.")} == {0.8}
    assert np.abs(images["up off"] - images["plain"]).max() > 0
    assert np.abs(images["lbw"] - images["plain"]).max() > 0


def test_export_writes_the_mix_as_one_adapter(studio_server):
    """The mix as one file through `vislora merge`'s exact merge; a build without it says so on the page."""
    from vislora import AdapterBank
    from vislora.studio.generation import generate_image, load_pipeline
    from vislora.tools.common import read as read_file

    studio, _ = studio_server
    request = Request("a handwritten digit two", steps=4,
                      mixes={"bold.safetensors": Mix(True, 0.7), "italic.safetensors": Mix(True, -0.4)})
    shot = studio.render(request)
    plain = studio.render(replace(request, mixes={})).image
    assert np.abs(np.asarray(shot.image, np.int16) - np.asarray(plain, np.int16)).max() > 2  # the mix shows
    path = studio.merged(request)
    assert path.parent == studio.outputs.root
    ranks = {k: read_file(studio.folder.resolve(k)).modules for k in request.mixes}
    merged = read_file(path).modules
    assert set(merged) == set(ranks["bold.safetensors"]) | set(ranks["italic.safetensors"])
    for p, w in merged.items():  # factors concatenated along the rank: rank r_bold + r_italic
        assert w.rank == sum(m[p].rank for m in ranks.values() if p in m)
    pipe, _ = load_pipeline(studio.source)
    AdapterBank(pipe).load("mix", path)
    alone = generate_image(pipe, replace(request, mixes={}))
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(shot.image, np.int16)).max() <= 2
    written = set(studio.outputs.root.iterdir())
    for sections in (Mix(True, 0.7, up=0.5), Mix(True, 0.7, lbw="OUTD")):
        with pytest.raises(StudioInputError, match="per-section factors and lbw cannot be written"):
            studio.merged(replace(request, mixes={"bold.safetensors": sections}))
    assert set(studio.outputs.root.iterdir()) == written  # nothing half-written


def test_live_preview_waits_for_generate_on_a_slow_base(studio_server):
    """Previews follow the sliders only while an image (scaled to the asked steps) takes under live_seconds."""
    import gradio

    from vislora.studio.handlers import MIX_FIELDS, Handlers

    studio, _ = studio_server
    studio.render(Request("a handwritten digit one", steps=2))
    rows = [getattr(Mix(), f) for f in MIX_FIELDS] * len(studio.names)  # each row switched off, factors at 1
    values = ["a handwritten digit one", "", 0, 2, 5.0, 32, 32, False, *rows]
    handlers, saved = Handlers(studio, gradio), studio.live_seconds
    try:
        studio.live_seconds = studio.last.seconds / 2  # as if this base were slow
        count = studio._count
        image, status, _ = handlers.preview(True, *values, progress=lambda *a, **k: None)
        assert "paused" in status and studio._count == count  # nothing drawn; Generate still draws
        studio.live_seconds = 60.0
        image, status, _ = handlers.preview(True, *values, progress=lambda *a, **k: None)
        assert status.startswith(f"image {count + 1}:") and image.size == (32, 32)
    finally:
        studio.live_seconds = saved

"""The studio page in a real headless Chromium (Debian's), driven by Playwright: sliders make new images, the
image equals the exported command's, fused equals unfused, refused files stay refused.

VISLORA_STUDIO_SCREENSHOTS=docs writes the README's screenshots of the page while the tests run.
"""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

from studio_fixtures import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (.ci/run installs it)")
SHOTS = os.environ.get("VISLORA_STUDIO_SCREENSHOTS")
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def page(studio_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    _, url = studio_server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 1000})
        tab.asked = []  # every URL the page requests
        tab.on("request", lambda r: tab.asked.append(r.url))
        tab.goto(url)
        tab.wait_for_selector("#generate")
        _fill(tab, "#steps", "6")
        yield tab
        browser.close()


def _id(key: str) -> str:
    return key.replace(".", "\\.")


def _fill(tab, selector: str, value: str) -> None:
    box = tab.locator(f"{selector} input[type=number], {selector} textarea, {selector} input[type=text]").first
    box.fill(value)
    box.press("Enter")


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


def _shot(tab, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(SHOTS) / name), full_page=True)


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


def test_slider_moves_make_new_images(page):
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
    _shot(page, "studio.png")


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


def test_bad_values_give_a_message_and_change_nothing(page, studio_server):
    studio, _ = studio_server
    before, shot = _src(page), studio.last
    _fill(page, "#prompt", "")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('error')", timeout=WAIT_MS)
    assert "prompt is empty" in page.inner_text("#status")
    assert _src(page) == before and studio.last is shot
    _fill(page, "#prompt", "a handwritten digit three")


def test_the_page_asks_nothing_of_other_servers(page, studio_server):
    _, url = studio_server
    assert page.asked and all(u.startswith((url, "data:", "blob:")) for u in page.asked), \
        sorted({u for u in page.asked if not u.startswith(url)})


def test_xy_grid_is_one_labelled_sheet(page, studio_server):
    studio, _ = studio_server
    shown = studio.last
    page.click("text=X/Y grid")
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
    _shot(page, "studio_grid.png")

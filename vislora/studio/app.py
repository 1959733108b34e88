"""The page: adapter rows (switch, strength, advanced sections), prompt and sampler, preview, X/Y grid, export.

Built once per Studio; one row per file of the adapter folder. Every generation shares one queue slot
(concurrency_id "render", limit 1). A control change (a slider's every move) first bumps the studio outside
the queue, so a render in flight sees it at its next step and stops; then it asks for a preview, which runs
when live preview is on and an image takes under the studio's live_seconds. `trigger_mode="always_last"`
keeps only the newest waiting preview: together, a debounce.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from .handlers import Handlers, timing_line
from .mix import SECTIONS
from .state import Studio

QUEUE = dict(concurrency_limit=1, concurrency_id="render")
SECTION_SLIDERS = tuple(SECTIONS)  # unet ... up, transformer, double, single: the order of Mix's fields


def build(studio: Studio) -> Any:
    """The gr.Blocks page for `studio` (not launched)."""
    import gradio as gr

    # Gradio caches every file it serves under this folder, read when components are made: keep it in the outputs.
    os.environ["GRADIO_TEMP_DIR"] = str(studio.outputs.root / ".gradio")
    with gr.Blocks(title="vislora studio", analytics_enabled=False, **look_kwargs(gr, gr.Blocks.__init__)) as page:
        gr.Markdown(f"## vislora studio\nmodel: `{studio.source.model}` · adapters: `{studio.folder.given}`")
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("### Adapters")
                rows: list[Any] = []
                for key, facts in studio.facts.items():
                    if not facts.usable:
                        _refused_row(gr, facts)
                        continue
                    with gr.Group(elem_id=f"row-{key}", elem_classes=["adapter", "usable"]):
                        gr.Markdown(f"**{key}** — {facts.summary()}", elem_classes=["adapter-facts"])
                        on = gr.Checkbox(False, label="on", elem_id=f"on-{key}")
                        strength = gr.Slider(-1, 2, 1.0, step=0.05, label="strength", elem_id=f"strength-{key}")
                        # every row has every slider (handlers read rows by position); those of sections
                        # this adapter has no layers in are hidden
                        shown, hint = studio.controls(key)
                        with gr.Accordion("advanced", open=False):
                            sections = [gr.Slider(-1, 2, 1.0, step=0.05, label=f"{s} factor", elem_id=f"{s}-{key}",
                                                  visible=s in shown) for s in SECTION_SLIDERS]
                            lbw = gr.Textbox("", label=hint, elem_id=f"lbw-{key}")
                    rows += [on, strength, *sections, lbw]
            with gr.Column(scale=1):
                prompt = gr.Textbox("a handwritten digit three", label="prompt", elem_id="prompt")
                negative = gr.Textbox("", label="negative prompt", elem_id="negative")
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                    steps = gr.Slider(1, 100, 20, step=1, label="steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, 5.0, step=0.5, label="guidance", elem_id="guidance")
                with gr.Row():
                    width = gr.Number(32, label="width", precision=0, elem_id="width")
                    height = gr.Number(32, label="height", precision=0, elem_id="height")
                with gr.Row():
                    fused = gr.Checkbox(False, label="fused (merge the mix into the weights)", elem_id="fused")
                    live = gr.Checkbox(True, label=f"live preview (when an image takes < {studio.live_seconds:g} s)",
                                       elem_id="live")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                image = gr.Image(label="preview", type="pil", format="png", interactive=False, height=300,
                                 elem_id="preview")
                status = gr.Markdown("", elem_id="status")
                timing = gr.Markdown(timing_line(studio), elem_id="timing")
        usable = [k for k, f in studio.facts.items() if f.usable]
        with gr.Accordion("X/Y grid", open=False):
            with gr.Row():
                gx = gr.Dropdown(usable, value=usable[0] if usable else None, label="x adapter", elem_id="grid-x")
                gxv = gr.Textbox("0,0.5,1", label="x strengths", elem_id="grid-x-values")
                gy = gr.Dropdown([""] + usable, value="", label="y adapter (optional)", elem_id="grid-y")
                gyv = gr.Textbox("0,1", label="y strengths", elem_id="grid-y-values")
            grid_go = gr.Button("Make grid", elem_id="grid-go")
            sheet = gr.Image(label="grid", type="pil", format="png", interactive=False, elem_id="grid-sheet")
        with gr.Accordion("Export", open=False):
            export_go = gr.Button("Export the shown image", elem_id="export-go")
            cmd = gr.Code(label="command", language="shell", lines=3, elem_id="export-command")
            code = gr.Code(label="python", language="python", elem_id="export-python")
            files = gr.File(label="files", file_count="multiple", interactive=False, elem_id="export-files")
            export_note = gr.Markdown("", elem_id="export-note")

        inputs = [prompt, negative, seed, steps, guidance, width, height, fused, *rows]
        h = Handlers(studio, gr)
        go.click(h.generate, inputs, [image, status, timing], **QUEUE)
        for control in [fused, *rows]:  # a text box asks on Enter or leaving it, not on every key
            for event in [control.submit, control.blur] if isinstance(control, gr.Textbox) else [control.change]:
                event(h.bump, None, None, queue=False)
                event(h.preview, [live, *inputs], [image, status, timing], trigger_mode="always_last", **QUEUE)
        grid_go.click(h.grid, [gx, gxv, gy, gyv, *inputs], [sheet, status], **QUEUE)
        export_go.click(h.export, None, [cmd, code, files, export_note], **QUEUE)
    return page


def _refused_row(gr: Any, facts: Any) -> None:
    """A file that cannot be used: its name, the first line of the reason, a switch that stays off, the details."""
    first, _, rest = facts.error.partition("\n")
    with gr.Group(elem_id=f"row-{facts.key}", elem_classes=["adapter", "refused"]):
        gr.Markdown(f"**{facts.key}** — refused: {first}", elem_classes=["adapter-facts"])
        gr.Checkbox(False, label="on (cannot be switched on)", interactive=False, elem_id=f"on-{facts.key}")
        if rest:
            with gr.Accordion("why", open=False):
                gr.Code(rest, language=None, wrap_lines=True)


# Tiny bases draw 32 px images: show them enlarged with square pixels; refused rows in red.
CSS = """
#preview img { width: 256px; height: 256px; object-fit: contain; image-rendering: pixelated; }
#grid-sheet img { height: 360px; width: auto; object-fit: contain; image-rendering: pixelated; }
.refused .adapter-facts, .refused .adapter-facts * { color: #b3261e !important; }
"""


def look_kwargs(gr: Any, where: Any) -> dict[str, Any]:
    """Theme (local fonts: the page asks no font server) and CSS, for whichever of Blocks() (Gradio 5) or
    launch() (Gradio 6) takes them."""
    params = inspect.signature(where).parameters
    fonts = dict(font=["ui-sans-serif", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    look = {"theme": gr.themes.Default(**fonts), "css": CSS}
    return {k: v for k, v in look.items() if k in params}

"""The `vislora` command.

    vislora classify --data DIR --model NAME --out OUT ...     the ViT classification recipe (same flags)
    vislora predict --adapter FILE [--weights BASE] [--top-k 5] IMAGE...
    vislora dreambooth --model BASE --instance-data DIR --instance-prompt TEXT --out OUT ...   (same flags)
    vislora style --model BASE --data DIR --out OUT ...                   Stable Diffusion style LoRA
    vislora generate --model DIR --lora FILE[:STRENGTH]... --prompt TEXT [--grid NAME=v1,v2 ...] --out PNG
    vislora inspect FILE [--json]                              format, kinds, ranks, coverage, base, metadata
    vislora convert IN OUT --to FORMAT                         any of vislora.formats.TARGETS
    vislora merge A:0.6 B:0.4 -o C [--rank r]                  exact, or by SVD
    vislora resize IN --rank r | --energy 0.9 -o OUT
    vislora extract --base B --tuned T --rank r -o OUT
    vislora studio --model DIR --adapters DIR [--port 7860] [--host 127.0.0.1]   (pip install vislora[studio])

Errors vislora raises on purpose print as one line, `error: ...`, with exit status 2; an image that cannot
be decoded is reported on its own line and the others are still predicted (exit status 1). No traceback
reaches the user (vislora.console: a full disk or a permission is one line too, Ctrl-C exits 130);
`vislora --debug COMMAND ...` shows it. docs/reliability.md lists what is refused and how.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from .console import DEBUG_ENV, guarded
from .errors import VisloraError
from .helpformat import HelpFormatter

DEBUG_FLAG = "--debug"


def _classify(argv: list[str]) -> int:
    from .recipes import classify_vit

    return classify_vit.main(argv)


def _dreambooth(argv: list[str]) -> int:
    from .recipes import dreambooth_sd

    return dreambooth_sd.main(argv)


def _style(argv: list[str]) -> int:
    from .recipes import style_sd

    return style_sd.main(argv)


def _predict(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vislora predict", description="Top-k labels of images, from a file the "
                                "classification recipe wrote (adapter or model).", formatter_class=HelpFormatter)
    p.add_argument("--adapter", required=True, help="adapter.safetensors (or model.safetensors) from the recipe")
    p.add_argument("--weights", help="base weights file, overriding the recorded path (its sha256 must match)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument("images", nargs="+")
    args = p.parse_args(argv)

    from .classify.classifier import load_classifier, predict
    from .images import ImageDecodeError

    try:
        classifier = load_classifier(args.adapter, weights=args.weights)
    except VisloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for image in args.images:
        try:
            (ranked,) = predict(classifier, [image], args.top_k)
        except ImageDecodeError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"image": image, "top": [{"label": label, "p": p} for label, p in ranked]}))
        else:
            print(f"{image}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    return status


def _generate(argv: list[str]) -> int:
    from .diffusion import generate

    return generate.main(argv)


def _tool(name: str) -> Callable[[list[str]], int]:
    """A file tool of vislora.tools, imported when used; its typed errors print as one line (status 2) by
    main's guard."""

    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(f".tools.{name}", __package__).main(argv)  # main() guards it

    return run


def _studio(argv: list[str]) -> int:
    from .studio import main as studio_main  # gradio is imported only in there

    return studio_main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "classify": (_classify, "fine-tune a timm ViT on an image folder (recipes/classify_vit.py)"),
    "predict": (_predict, "top-k labels of images with a trained adapter"),
    "dreambooth": (_dreambooth, "teach a Stable Diffusion model a subject (recipes/dreambooth_sd.py)"),
    "style": (_style, "train a style adapter from captioned images (recipes/style_sd.py)"),
    "generate": (_generate, "images from a diffusion pipeline with adapters mixed by strength, or an X/Y grid"),
    "inspect": (_tool("inspect"), "what an adapter file holds: format, kinds, ranks, coverage, base, metadata"),
    "convert": (_tool("convert"), "an adapter file in another layout (--to: a name in vislora.formats.TARGETS)"),
    "merge": (_tool("merge"), "blend adapter files into one: exact (ranks concatenated) or by SVD (--rank)"),
    "resize": (_tool("resize"), "an adapter at a lower rank by SVD (--rank r or --energy 0.9), error reported"),
    "extract": (_tool("extract"), "a LoRA from the difference of two checkpoints (LoCon for convs)"),
    "studio": (_studio, "a local page to mix adapters with sliders and a live preview (vislora[studio])"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv  # global: before the command or among its flags
    argv = [a for a in argv if a != DEBUG_FLAG]
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
        asked = bool(argv) and argv[0] in ("-h", "--help")  # asked: stdout and 0, as argparse does; else usage error
        print("usage: vislora [--debug] COMMAND [options]    (vislora COMMAND --help: its options and defaults)\n\n"
              "commands:\n" + "\n".join(lines)
              + "\n\n--debug: show the traceback of an error instead of its one line", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    command, _ = COMMANDS[argv[0]]
    before = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the recipes' own guard (and accelerate's processes) read it
    try:
        return guarded(lambda: command(argv[1:]))
    finally:
        if debug:
            os.environ.pop(DEBUG_ENV) if before is None else os.environ.__setitem__(DEBUG_ENV, before)


if __name__ == "__main__":
    sys.exit(main())

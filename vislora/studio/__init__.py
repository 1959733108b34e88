"""`vislora studio`: a local page to mix adapters with sliders and a live preview (needs `vislora[studio]`).

    vislora studio --model samples/digits_sd --adapters adapters/ [--port 7860] [--host 127.0.0.1]

Only this package imports gradio; the core never needs it. The server listens on 127.0.0.1 unless --host
says otherwise, and serves nothing but the page and its own outputs (see paths.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from ..errors import VisloraError

INSTALL_HINT = "the studio needs gradio: pip install 'vislora[studio]'"


class StudioSetupError(VisloraError):
    """The studio cannot start (gradio missing, port in use)."""


def require_gradio() -> Any:
    """Import gradio with its phone-home switched off, or a one-line StudioSetupError naming the extra."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise StudioSetupError(INSTALL_HINT) from None
    return gradio


def check_port(host: str, port: int) -> None:
    """StudioSetupError if host:port cannot be bound (another server has it), before any model is loaded."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise StudioSetupError(f"port {port} on {host} is in use or not allowed ({e.strerror}); "
                                   f"pick another with --port") from None


def serve(studio: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Launch the page for `studio`; returns the gr.Blocks (running in the background when block=False)."""
    gr = require_gradio()
    from .app import build, look_kwargs

    check_port(host, port)
    page = build(studio)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, ssr_mode=False,
                show_error=True, allowed_paths=[], blocked_paths=[], **look_kwargs(gr, gr.Blocks.launch))
    return page


def main(argv: list[str] | None = None) -> int:
    from ..diffusion.bases import add_source_options

    p = argparse.ArgumentParser(prog="vislora studio", description="A local page to mix adapters with sliders "
                                "and a live preview.")
    p.add_argument("--model", required=True, help="a diffusers pipeline folder (e.g. samples/digits_sd), a hub id, "
                   "or one .safetensors checkpoint")
    add_source_options(p)
    p.add_argument("--adapters", required=True, help="folder of adapter files (.safetensors)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--live-seconds", type=float, default=1.0, help="previews follow the sliders while one image "
                   "takes less than this (default 1 s); slower bases wait for Generate")
    p.add_argument("--out", default="studio_out", help="where exports (PNG, merged adapter) are written")
    args = p.parse_args(argv)
    try:
        # Cheap checks first, so a busy port or a missing gradio is said before the model loads.
        require_gradio()
        check_port(args.host, args.port)
        from .state import Studio

        studio = Studio(args.model, args.adapters, args.out, live_seconds=args.live_seconds,
                        model_config=args.model_config, revision=args.revision)
        print(f"vislora studio on http://{args.host}:{args.port}  (Ctrl+C to stop)", file=sys.stderr)
        serve(studio, args.host, args.port)
    except VisloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

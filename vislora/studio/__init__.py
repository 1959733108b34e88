"""`vislora studio`: a local page to mix adapters with sliders and a live preview (needs `vislora[studio]`).

    vislora studio --model samples/digits_sd --adapters adapters/ [--port 7860] [--host 127.0.0.1]

Only this package imports gradio; the core never needs it. The server listens on 127.0.0.1 unless --host
says otherwise, serves nothing but the page and its own outputs (see paths.py), and answers only local Host
names and its own page's origin (see guard.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, Sequence

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


def serve(studio: Any, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
          allow_hosts: Sequence[str] = ()) -> Any:
    """Launch the page for `studio`; returns the gr.Blocks (running in the background when block=False).
    It answers only the Host names of guard.accepted_hosts(host, allow_hosts) and its own page's origin."""
    gr = require_gradio()
    from . import guard
    from .app import build, look_kwargs

    check_port(host, port)
    page = build(studio)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, ssr_mode=False,
                show_error=True, allowed_paths=[], blocked_paths=[], **look_kwargs(gr, gr.Blocks.launch),
                **guard.launch_kwargs(guard.accepted_hosts(host, allow_hosts)))
    return page


def port_number(text: str) -> int:
    """argparse type for --port: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give a number from 1 to 65535, e.g. 7860")
    return port


def main(argv: list[str] | None = None) -> int:
    from .. import checks
    from ..diffusion.bases import add_source_options, add_threads_option
    from ..helpformat import HelpFormatter

    p = checks.Parser(prog="vislora studio", formatter_class=HelpFormatter,
                                description="A local page to mix adapters with sliders and a live preview. It "
                                "answers only this machine's names unless --allow-host adds one (docs/studio.md).")
    p.add_argument("--model", required=True, help="a diffusers pipeline folder (e.g. samples/digits_sd), a hub id, "
                   "or one .safetensors checkpoint")
    add_source_options(p)
    p.add_argument("--adapters", required=True, help="folder of adapter files (.safetensors)")
    p.add_argument("--port", type=port_number, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to NAME (the name a remote browser uses, e.g. "
                   "myserver.lan); repeat for more; '*' answers any name")
    p.add_argument("--live-seconds", type=float, default=1.0, help="previews follow the sliders while one image "
                   "takes less than this many seconds; slower bases wait for Generate")
    p.add_argument("--out", default="studio_out", help="where exports (PNG, merged adapter) are written")
    add_threads_option(p)
    args = p.parse_args(argv)
    try:
        # Cheap checks first, so a bad --out, a busy port or a missing gradio is said before the model loads.
        from .paths import OutputFolder

        OutputFolder(args.out)
        require_gradio()
        check_port(args.host, args.port)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from .state import Studio

        studio = Studio(args.model, args.adapters, args.out, live_seconds=args.live_seconds,
                        model_config=args.model_config, revision=args.revision)
        print(f"vislora studio on http://{args.host}:{args.port}  (Ctrl+C to stop)", file=sys.stderr)
        from .guard import accepted_hosts, is_loopback

        if not is_loopback(args.host) and not args.allow_host:
            print(f"note: it answers only the names {' '.join(accepted_hosts(args.host))}; a remote browser's "
                  "name needs --allow-host NAME (docs/studio.md)", file=sys.stderr)
        serve(studio, args.host, args.port, allow_hosts=args.allow_host)
    except VisloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

"""Who may talk to the studio: local Host names only, same-origin browser requests only, small uploads only.

A page on another site can reach a server on 127.0.0.1 through the user's browser, by DNS rebinding (its own
name made to resolve to 127.0.0.1, so the browser sends `Host: attacker.example`) or by a plain cross-origin
form POST. Jupyter's answer, followed here:
- Host: Starlette's TrustedHostMiddleware answers 400 unless the Host header names this machine (localhost,
  127.0.0.1, [::1]), the address the server was bound to, or a name given with --allow-host;
- Origin: a browser request that carries another origin (any method: POST, upload, event stream) is answered
  403. Browsers send Origin on every cross-origin request they let a page make, and on same-origin POSTs; the
  page's own requests carry its own origin. Requests without Origin are not from another site's page (curl,
  Python clients) and pass; they still need an accepted Host;
- uploads: gradio's own `max_file_size` cap (the page uploads nothing; the cap bounds what a client can drop
  into the outputs' cache).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
UPLOAD_CAP = "1mb"  # gradio's max_file_size syntax; uploads larger than this get 413


def accepted_hosts(bound: str, allow: Iterable[str] = ()) -> list[str]:
    """The Host names the studio answers: this machine's loopback names, the bound address when it is a
    specific one (a browser that reaches it by that address sends it), and every --allow-host name."""
    hosts = list(LOCAL_HOSTS)
    if bound not in WILDCARD_BINDS:
        hosts.append(_bracketed(bound))
    for name in allow:
        hosts.append(_bracketed(name.strip().lower()))
    return list(dict.fromkeys(hosts))


def _bracketed(host: str) -> str:
    """An IPv6 literal as a Host header writes it ([::1]); names and IPv4 as they are."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SameOriginOnly:
    """ASGI middleware: a request whose Origin header (or, changing state, Sec-Fetch-Site) says it comes from
    another site's page is refused with 403. Same origin: the Origin's host:port equals the request's Host
    header, which TrustedHostMiddleware has already checked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            why = foreign(Headers(scope=scope), scope.get("method", "GET"))
            if why:
                if scope["type"] == "websocket":  # closing before accepting answers the handshake with 403
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await PlainTextResponse(f"refused: {why}", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def foreign(headers: Headers, method: str) -> str:
    """Why this request comes from another origin's page, or "" when it does not. A link followed from
    another site (a GET navigation, no Origin) still opens the page."""
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != headers.get("host", "").lower():
            return f"a request from {origin} (the studio answers its own page only)"
    if method not in ("GET", "HEAD") and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "a request from another site (the studio answers its own page only)"
    return ""


def middleware(hosts: list[str]) -> list[Middleware]:
    """The guard as FastAPI middleware, for gradio's `launch(app_kwargs={"middleware": ...})`: the Host check
    first, then the Origin check."""
    return [Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False), Middleware(SameOriginOnly)]


def launch_kwargs(hosts: list[str]) -> dict[str, Any]:
    """What serve() gives gradio's launch for the guard: the middleware, the upload cap, strict CORS."""
    return dict(app_kwargs={"middleware": middleware(hosts)}, max_file_size=UPLOAD_CAP, strict_cors=True)

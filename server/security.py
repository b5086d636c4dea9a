"""Guarding a server on localhost against the web sites its user visits (ASGI middleware).

Any page in the user's browser can send requests to 127.0.0.1, and with DNS rebinding
(attacker.example resolving to 127.0.0.1 after the page loaded) it can also read the answers,
because the browser then counts the server as the attacker's own origin. So:
- `Host` must name this server: a loopback name, an IP literal (rebinding needs a DNS name), the
  bound address, this machine's name when listening on all interfaces, or a name the user allowed
  (`--allow-host`). Anything else is refused before routing.
- A browser request from another origin (its `Origin` header, or `Sec-Fetch-Site` when a no-cors
  request carries no Origin) is refused unless the user allowed that origin (`--allow-origin`),
  which also gets CORS headers so that its page can read the answers.
- Every response carries a Content-Security-Policy that allows nothing remote and no inline
  script (the chat page renders untrusted model output), and the usual hardening headers.
Clients that are not browsers (curl, the openai package) send no Origin and are unaffected.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Optional
from urllib.parse import urlsplit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
API_PREFIXES = ("/v1", "/ui/api")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; media-src 'none'; object-src 'none'; frame-src 'none'; worker-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HARDENING = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
# what a browser client may send: the OpenAI JS SDK adds its own (`x-stainless-os`, `x-stainless-retry-count`,
# ...) besides these; an allowed origin's preflight gets the headers it asks for
CORS_HEADERS = "authorization, content-type"


def _split_host(value: str) -> tuple[str, Optional[int]]:
    """`Host` header -> (lower-case hostname without brackets, port)."""
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass
class HostCheckConfig:
    """Who may talk to the server: `bind` is the address it listens on."""

    bind: str = "127.0.0.1"
    allowed_hosts: Iterable[str] = ()
    allowed_origins: Iterable[str] = ()
    hosts: set[str] = field(init=False)
    origins: set[str] = field(init=False)
    any_origin: bool = field(init=False)

    def __post_init__(self) -> None:
        hosts = {h.lower().strip("[]") for h in (*LOOPBACK_NAMES, *self.allowed_hosts)}
        if self.bind in WILDCARD_HOSTS:
            name = socket.gethostname().lower()
            hosts |= {name, name.split(".")[0] + ".local"}
        else:
            hosts.add(self.bind.lower().strip("[]"))
        self.hosts = hosts
        origins = {o.rstrip("/").lower() for o in self.allowed_origins}
        self.any_origin = "*" in origins
        self.origins = origins - {"*"}

    def host_allowed(self, host: str) -> bool:
        name, _ = _split_host(host)
        return bool(name) and (name in self.hosts or _is_ip(name))

    def origin_allowed(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self.origins


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Is `Origin` the origin of a page served by this server under `Host`?"""
    try:
        o = urlsplit(origin)
        o_port = o.port or {"http": 80, "https": 443}.get(o.scheme)
    except ValueError:
        return False
    name, port = _split_host(host)
    port = port or {"http": 80, "https": 443}.get(scheme)
    return o.scheme == scheme and (o.hostname or "").lower() == name and o_port == port


class HostCheck:
    """ASGI middleware implementing the policy in the module docstring."""

    def __init__(self, app: Callable, config: Optional[HostCheckConfig] = None):
        self.app = app
        self.config = config or HostCheckConfig()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.config.host_allowed(host):
            await _refuse(send, 403, "host_not_allowed",
                          f"This server does not answer to the name {host!r} (protection against DNS rebinding). "
                          "Use http://127.0.0.1 or http://localhost, or start it with --allow-host NAME.")
            return
        origin = headers.get("origin")
        cross = origin is not None and not same_origin(origin, host, scope.get("scheme", "http"))
        path = scope.get("path", "")
        if origin is None and path.startswith(API_PREFIXES):
            # a no-cors request (<img>, <script>, a form) from another site carries no Origin on GET
            cross = headers.get("sec-fetch-site") in ("cross-site", "same-site") \
                and headers.get("sec-fetch-mode") != "navigate"
        allowed_cross = cross and origin is not None and self.config.origin_allowed(origin)
        if cross and not allowed_cross:
            await _refuse(send, 403, "origin_not_allowed",
                          f"Requests from the web page at {origin or 'another site'} are refused. Allow that "
                          "origin with --allow-origin ORIGIN if you trust it.")
            return
        if allowed_cross and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _preflight(send, origin, headers.get("access-control-request-headers"))
            return
        extra = _cors(origin) if allowed_cross else {}

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                added = [(k.encode(), v.encode()) for k, v in {**HARDENING, **extra}.items() if k.encode() not in present]
                message = dict(message, headers=list(message.get("headers", [])) + added)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cors(origin: str) -> dict[str, str]:
    return {"access-control-allow-origin": origin, "vary": "Origin",
            "access-control-expose-headers": "content-disposition"}


async def _preflight(send: Send, origin: str, requested: Optional[str]) -> None:
    asked = [h.strip().lower() for h in (requested or "").split(",") if h.strip()]
    allowed = ", ".join(dict.fromkeys(CORS_HEADERS.split(", ") + asked))
    headers = {**HARDENING, **_cors(origin), "access-control-allow-methods": CORS_METHODS,
               "access-control-allow-headers": allowed, "access-control-max-age": "600",
               "content-length": "0"}
    await send({"type": "http.response.start", "status": 204,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    headers = {**HARDENING, "content-type": "application/json", "content-length": str(len(body))}
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": body})

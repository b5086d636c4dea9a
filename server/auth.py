"""API keys: checking one in constant time, and warning when a server is open without one."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Optional

from .security import API_PREFIXES, WILDCARD_HOSTS


def _digest(text: str) -> bytes:
    # surrogateescape: a header decoded from arbitrary bytes still hashes; it just never matches
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def key_matches(presented: Optional[str], expected: str) -> bool:
    """Whether the client's key is the server's, in time independent of both.

    Both sides are hashed first, so `compare_digest` always compares 32 bytes: the time taken
    reveals neither where the keys differ nor the key's length, and no input (non-ASCII, empty)
    can make the comparison raise.
    """
    return hmac.compare_digest(_digest(presented or ""), _digest(expected))


def bearer_token(authorization: str) -> Optional[str]:
    """The token of an `Authorization: Bearer TOKEN` header, else None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure_warning(host: str, api_key: Optional[str]) -> Optional[str]:
    """A warning when the server listens beyond this machine without an API key, else None."""
    if api_key or is_loopback(host):
        return None
    where = "all network interfaces" if host in WILDCARD_HOSTS else host
    return (f"listening on {where} without --api-key: anyone who can reach this machine can use the model "
            "(set --api-key or GPTOSS_API_KEY)")


class APIKeyCheck:
    """ASGI middleware: requests to the API (and the page's API) must carry the key.

    Pure ASGI, not Starlette's BaseHTTPMiddleware: that wrapper runs the route in a task of its own and
    hides the client's disconnect from it, so a request whose client hung up would generate on.
    """

    def __init__(self, app, api_key: str):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(API_PREFIXES):
            headers = dict(scope.get("headers") or [])
            presented = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
            if not key_matches(presented, self.api_key):
                from starlette.responses import JSONResponse

                from .api_models import APIError

                e = APIError(401, "Incorrect or missing API key (send `Authorization: Bearer <key>`).",
                             code="invalid_api_key")
                await JSONResponse(e.body(), status_code=e.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

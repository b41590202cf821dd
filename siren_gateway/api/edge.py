"""The edge of the API: limits and headers applied to every request before anything else.

A pure ASGI middleware, so it runs before routing, authentication and body parsing:
- a request body larger than `max_body_bytes` is refused with 413 while it is being read: at
  once when Content-Length says so, otherwise as soon as the chunks read pass the limit. At most
  the limit is ever held in memory, so an unauthenticated 100 MB POST costs (almost) nothing;
- every response gets nosniff, a referrer policy and framing refused; the dashboard a Content
  Security Policy allowing only its own origin; API responses `Cache-Control: no-store`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from siren_gateway.security.audit import RequestOrigin, request_origin

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

def content_policy(image_origins: tuple[str, ...] = ()) -> str:
    """The pages' content security policy; `image_origins`: a tile server the map draws from."""
    images = " ".join(("'self'", "data:", *image_origins))
    return ("default-src 'self'; script-src 'self'; style-src 'self'; "
            f"img-src {images}; media-src 'self'; connect-src 'self' ws: wss:; "
            "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


CSP = content_policy()
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, csp: str = CSP) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.csp = csp.encode()
        self.refused_too_large = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        agent = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                      if k == b"user-agent"), "")
        request_origin.set(RequestOrigin(client[0] if client else "unknown", agent[:200]))
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(send)
            return
        body_receive = receive
        if scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            # Read the body here, bounded, and hand the app what was read.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await self._too_large(send)
                    return
                chunks.append(chunk)
                more = bool(message.get("more_body"))
            body = b"".join(chunks)
            delivered = False

            async def replay() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: only a disconnect can come

            body_receive = replay
        api = path.startswith("/api/") or path == "/metrics"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in COMMON_HEADERS if h[0] not in present]
                if api:
                    if b"cache-control" not in present:
                        headers.append((b"cache-control", b"no-store"))
                else:
                    headers.append((b"content-security-policy", self.csp))
                message["headers"] = headers
            await send(message)

        await self.app(scope, body_receive, send_with_headers)

    async def _too_large(self, send: Send) -> None:
        self.refused_too_large += 1
        body = json.dumps({"detail": f"request body larger than {self.max_body_bytes} bytes"}
                          ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *COMMON_HEADERS]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

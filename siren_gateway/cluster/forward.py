"""Any node accepts a request: a follower hands each API request to the leader, which runs the
engines, and returns its answer. The node's own health and metrics, the dashboard's files and
the live stream stay local (sessions are shared: security/sessions.py).

The leader is told who the client was (for the audit log and the login throttle) in a header
it believes only with the cluster secret.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siren_gateway.cluster.remote import CLIENT_HEADER, TOKEN_HEADER

if TYPE_CHECKING:
    from siren_gateway.gateway import Gateway

log = logging.getLogger(__name__)
LOCAL_PATHS = ("/api/cluster/deliver", "/api/cluster/read", "/api/health", "/api/stream")
_HOP_BY_HOP = {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
               b"upgrade", b"te", b"trailer", b"proxy-authorization", b"proxy-connection",
               TOKEN_HEADER.encode(), CLIENT_HEADER.encode()}


class LeaderForwarding:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.forwarded = 0
        self.failed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        membership = self.gateway.membership
        path = scope.get("path", "")
        if (scope["type"] != "http" or membership is None or membership.leader
                or not path.startswith("/api/") or path.startswith(LOCAL_PATHS)):
            await self.app(scope, receive, send)
            return
        leader = membership.leader_address()
        if leader is None:
            await _answer(send, 503, {"detail": "no leader node now (an election takes up to "
                                      "the lease time): try again"}, retry_after=True)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.lower() not in _HOP_BY_HOP]
        client = scope.get("client")
        headers += [(TOKEN_HEADER, self.gateway.cluster_secret or ""),
                    (CLIENT_HEADER, client[0] if client else "unknown")]
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{leader}{path}" + (f"?{query}" if query else "")
        import httpx  # (cluster nodes only, like NodeClient)

        try:
            response = await self.gateway.node_client().request(
                scope["method"], url, content=body, headers=headers,
                timeout=httpx.Timeout(60.0, connect=2.0))
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("forwarding %s %s to the leader %s failed: %r", scope["method"], path,
                        membership.leader_id, exc)
            await _answer(send, 502, {"detail": f"the leader node {membership.leader_id} did "
                                      "not answer: try again"}, retry_after=True)
            return
        self.forwarded += 1
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
               if k.lower().encode() not in _HOP_BY_HOP and k.lower() != "content-encoding"]
        out.append((b"content-length", str(len(response.content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": out})
        await send({"type": "http.response.body", "body": response.content})


async def _answer(send: Send, status: int, body: dict[str, Any], retry_after: bool) -> None:
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(content)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"2"))
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": content})

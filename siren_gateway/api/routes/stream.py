"""One WebSocket stream of live events for the dashboard and other clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from siren_gateway.gateway import Gateway
from siren_gateway.live.bus import (
    AlertChanged,
    FaultsChanged,
    MaintenanceChanged,
    ScheduleEvent,
    SirenResultFinal,
    StatusChanged,
)
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.security.auth import Role

router = APIRouter(tags=["stream"])
STREAMED = (AlertChanged, StatusChanged, FaultsChanged, SirenResultFinal, ScheduleEvent,
            MaintenanceChanged)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(value)
    return str(value)


SUBPROTOCOL = "siren-gateway"
TOKEN_PREFIX = "bearer."
SESSION_CHECK_S = 1.0


def _offered_token(websocket: WebSocket) -> str | None:
    """The bearer token, offered as a WebSocket subprotocol `bearer.<token>` beside
    `siren-gateway`: never in the URL, where access logs and proxies would keep it."""
    for offered in websocket.scope.get("subprotocols", ()):
        if isinstance(offered, str) and offered.startswith(TOKEN_PREFIX):
            return offered[len(TOKEN_PREFIX):][:200]
    return None


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """Events as JSON objects `{"type": ..., ...}`. Offer the subprotocols `siren-gateway` and
    `bearer.<token>`; the stream is closed (4401) when the session ends or is revoked."""
    gateway: Gateway = websocket.app.state.gateway
    token = _offered_token(websocket)
    principal = await gateway.sessions.resolve(token) if token else None
    if token is None or principal is None or principal.role < Role.VIEWER:
        await websocket.close(code=4401, reason="log in first: offer subprotocol "
                              "bearer.<token> with siren-gateway")
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    # A slow client loses its own oldest events (counted); the gateway never waits for it.
    subscription = gateway.bus.subscribe(f"websocket {principal.username}", maxsize=2000,
                                         kinds=STREAMED)

    async def send_events() -> None:
        await websocket.send_json({"type": "hello", "user": principal.username})
        while True:
            event = await subscription.get()
            body = {"type": type(event).__name__} | dataclasses.asdict(event)
            await websocket.send_text(json.dumps(body, default=_jsonable, ensure_ascii=False))

    async def until_client_leaves() -> None:
        # Without reading, a client that leaves while no events flow is never noticed, and the
        # connection (and the server's shutdown) would wait for it forever.
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    async def while_session_lives() -> None:
        # A stream lives no longer than its session: logout, revocation, idle or absolute end.
        # (An open stream counts as use: the session's idle clock does not run meanwhile.)
        # (polled: sessions end by the clock as well as by revocation, and this costs one dict
        # lookup a second per stream)
        while await gateway.sessions.resolve(token) is not None:  # noqa: ASYNC110
            await asyncio.sleep(SESSION_CHECK_S)
        with contextlib.suppress(Exception):
            await websocket.close(code=4401, reason="session ended")

    tasks = [asyncio.create_task(send_events()), asyncio.create_task(until_client_leaves()),
             asyncio.create_task(while_session_lives())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
        subscription.close()

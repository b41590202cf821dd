"""One WebSocket stream of live events for the dashboard and other clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from siren_gateway.auth import Role
from siren_gateway.bus import (
    AlertChanged,
    FaultsChanged,
    ScheduleEvent,
    SirenResultFinal,
    StatusChanged,
)
from siren_gateway.gateway import Gateway
from siren_gateway.tasks import cancel_and_wait

router = APIRouter(tags=["stream"])
STREAMED = (AlertChanged, StatusChanged, FaultsChanged, SirenResultFinal, ScheduleEvent)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(value)
    return str(value)


@router.websocket("/stream")
async def stream(websocket: WebSocket, token: str = "") -> None:
    """Events as JSON objects `{"type": ..., ...}`. Log in first; pass `?token=`."""
    gateway: Gateway = websocket.app.state.gateway
    principal = gateway.tokens.resolve(token) if token else None
    if principal is None or principal.role < Role.VIEWER:
        await websocket.close(code=4401, reason="log in first: ?token=<bearer token>")
        return
    await websocket.accept()
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

    tasks = [asyncio.create_task(send_events()), asyncio.create_task(until_client_leaves())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)
        subscription.close()

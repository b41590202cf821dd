"""FastAPI app factory: the gateway's lifecycle runs inside the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from siren_gateway.api.routes import (
    activations,
    alerts,
    audit,
    auth,
    health,
    schedules,
    signals,
    sirens,
    stream,
)
from siren_gateway.gateway import Gateway


def create_app(gateway: Gateway, manage_lifecycle: bool = True) -> FastAPI:
    """Build the API for a gateway; with manage_lifecycle it starts and stops the gateway."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await gateway.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await gateway.stop()

    app = FastAPI(title="Siren Gateway", version="0.1.0", lifespan=lifespan)
    app.state.gateway = gateway
    for module in (health, auth, sirens, signals, activations, alerts, audit, schedules, stream):
        app.include_router(module.router, prefix="/api")
    return app

"""FastAPI app factory: the gateway's lifecycle runs inside the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from siren_gateway.api.routes import (
    activations,
    alerts,
    audit,
    auth,
    health,
    metrics,
    schedules,
    signals,
    sirens,
    stream,
)
from siren_gateway.gateway import Gateway

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"


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
    app.include_router(metrics.router)  # /metrics (Prometheus' usual path) and /api/site
    # The dashboard: static files of our own, served by this app (no separate server, no CDN).
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR), name="dashboard")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html")

    return app

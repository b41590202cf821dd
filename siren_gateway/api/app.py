"""FastAPI app factory: the gateway's lifecycle runs inside the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from siren_gateway import errors
from siren_gateway.api.edge import EdgeMiddleware, content_policy
from siren_gateway.api.routes import (
    activations,
    alerts,
    assets,
    audit,
    auth,
    cluster,
    coverage,
    fleet,
    health,
    inspections,
    maintenance,
    metrics,
    schedules,
    signals,
    sirens,
    stream,
    workorders,
)
from siren_gateway.cluster.forward import LeaderForwarding
from siren_gateway.gateway import Gateway

# The one place a domain refusal becomes HTTP (most specific kind first).
REFUSAL_STATUS: tuple[tuple[type[errors.Refused], int], ...] = (
    (errors.NotFound, 404), (errors.ConfirmationRequired, 403), (errors.Forbidden, 403),
    (errors.Conflict, 409),
    (errors.Invalid, 422), (errors.StorageUnavailable, 503))


def refusal_status(exc: errors.Refused) -> int:
    return next((status for kind, status in REFUSAL_STATUS if isinstance(exc, kind)), 409)


class ErrorOut(BaseModel):
    detail: Any


# Every route can answer these (limits and authentication sit in front of all of them); the
# OpenAPI document says so, so a client generated from it (or schemathesis) expects them.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text} for status, text in (
        (401, "not logged in, or the session ended"), (403, "the role does not allow it"),
        (404, "no such thing"), (409, "refused by a safety rule or the current state"),
        (413, "request body too large"), (422, "invalid input, with the reason"),
        (429, "too many requests"), (503, "storage is failing: tests and exercises wait"))}

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
    # (maintenance before schedules: /reports/maintenance is not an occurrence's report)
    for module in (health, auth, sirens, signals, activations, alerts, audit, maintenance,
                   schedules, stream, coverage, workorders, inspections, assets, fleet,
                   cluster):
        app.include_router(module.router, prefix="/api", responses=ERRORS)
    app.include_router(metrics.router, responses=ERRORS)  # /metrics and /api/site
    tiles = gateway.site.config.map.tile_origin
    app.add_middleware(LeaderForwarding, gateway=gateway)  # (inside the edge's limits)
    app.add_middleware(EdgeMiddleware, max_body_bytes=gateway.site.config.api.max_body_bytes,
                       csp=content_policy((tiles,) if tiles else ()))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Why, without echoing the input back (it may be a password, or a megabyte).
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300],
                   "type": e.get("type", "")} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(errors.Refused)
    async def refused(_: Request, exc: errors.Refused) -> JSONResponse:
        return JSONResponse({"detail": {"message": exc.message, **exc.details}},
                            status_code=refusal_status(exc))
    # The dashboard: static files of our own, served by this app (no separate server, no CDN).
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD_DIR), name="dashboard")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html")

    @app.get("/wall", include_in_schema=False)
    def wall() -> FileResponse:
        """The wall display: read-only, large figures (any viewer)."""
        return FileResponse(DASHBOARD_DIR / "wall.html")

    return app

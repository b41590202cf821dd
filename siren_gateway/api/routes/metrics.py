"""Prometheus metrics (siren_gateway/metrics.py) and the site's description for the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from siren_gateway.api.deps import GatewayDep, Viewer
from siren_gateway.api.schemas import SiteOut

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(gateway: GatewayDep) -> Response:
    # On the loop (not the thread pool): the task count is the loop's own.
    return Response(gateway.instruments.expose(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/site", response_model=SiteOut)
def site(gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    info = gateway.site.config.site
    return {"name": info.name, "name_zh": info.name_zh, "timezone": info.timezone,
            "zones": [z.model_dump() for z in gateway.site.config.zones],
            "map": gateway.site.config.map.model_dump()}

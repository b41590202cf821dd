from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from siren_gateway.api.deps import BearerToken, GatewayDep
from siren_gateway.api.schemas import HealthOut
from siren_gateway.cluster.remote import TOKEN_HEADER, token_matches

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut,
            response_model_exclude_unset=True)
async def health(request: Request, gateway: GatewayDep, token: BearerToken) -> dict[str, Any]:
    """Liveness for anyone (a load balancer, a supervisor); the details need a session (or,
    from another cluster node or its monitoring, the cluster secret: sessions live on the
    leader, and a follower's own figures are here)."""
    public: dict[str, Any] = {"status": "ok" if gateway.started_at else "starting"}
    if gateway.membership is not None:
        public["leader"] = gateway.membership.leader
    if token_matches(request.headers.get(TOKEN_HEADER), gateway.cluster_secret):
        return gateway.health() | public
    if not token or await gateway.sessions.resolve(token) is None:
        return public
    return gateway.health() | public

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from siren_gateway.api.deps import BearerToken, GatewayDep
from siren_gateway.api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut,
            response_model_exclude_unset=True)
def health(gateway: GatewayDep, token: BearerToken) -> dict[str, Any]:
    """Liveness for anyone (a load balancer, a supervisor); the details need a session."""
    public: dict[str, Any] = {"status": "ok" if gateway.started_at else "starting"}
    if gateway.membership is not None:
        public["leader"] = gateway.membership.leader
    if not token or gateway.tokens.resolve(token) is None:
        return public
    return gateway.health() | public

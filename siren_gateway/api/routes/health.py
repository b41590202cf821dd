from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from siren_gateway.api.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(gateway: GatewayDep) -> dict[str, Any]:
    return gateway.health()

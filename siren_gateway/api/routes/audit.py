from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from siren_gateway.api.deps import GatewayDep, Operator

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def audit(gateway: GatewayDep, _: Operator,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                before_id: int | None = None, action: str | None = None) -> list[dict[str, Any]]:
    return await gateway.audit.entries(limit, before_id, action)

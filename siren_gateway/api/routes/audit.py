from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from siren_gateway.api.deps import GatewayDep, Operator
from siren_gateway.api.limits import BeforeId, QueryText
from siren_gateway.api.schemas import AuditEntryOut

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[AuditEntryOut])
async def audit(gateway: GatewayDep, _: Operator,
                limit: Annotated[int, Query(ge=1, le=200)] = 100,
                before_id: BeforeId = None, action: QueryText = None) -> list[dict[str, Any]]:
    """Newest first, one bounded page at a time: the next page is `before_id` = the last id."""
    return await gateway.audit.entries(limit, before_id, action)

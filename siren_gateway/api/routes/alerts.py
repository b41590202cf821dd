from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.api.deps import GatewayDep, Operator, Viewer
from siren_gateway.api.limits import QueryText, RowId
from siren_gateway.api.schemas import AlertOut

router = APIRouter(tags=["alerts"])


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field(min_length=1, max_length=2000)


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(gateway: GatewayDep, _: Viewer,
                state: Literal["active", "acknowledged", "cleared"] | None = None,
                severity: Literal["info", "minor", "major", "critical"] | None = None,
                siren: QueryText = None, zone: QueryText = None) -> list[dict[str, Any]]:
    """Alerts, active first; `severity` means that severity or worse."""
    return gateway.alerts.query(state, severity, siren, zone)


@router.get("/alerts/{alert_id}", response_model=AlertOut)
def get_alert(alert_id: RowId, gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    alert = gateway.alerts.get(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return alert.public()


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut)
async def acknowledge(alert_id: RowId, body: AckBody, gateway: GatewayDep,
                      who: Operator) -> dict[str, Any]:
    alert = await gateway.alerts.acknowledge(who, alert_id, body.comment)
    return alert.public()

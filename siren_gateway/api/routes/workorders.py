"""Work orders: list, open by hand, and move through their states (the siren verifies)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.api.deps import GatewayDep, Technician, Viewer
from siren_gateway.api.limits import QueryText, RowId, SirenId
from siren_gateway.api.schemas import WorkOrderOut

router = APIRouter(tags=["work orders"])
Priority = Literal["low", "normal", "high", "urgent"]
State = Literal["open", "assigned", "in_progress", "resolved", "verified", "reopened",
                "cancelled"]


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise HTTPException(422, "due needs a time zone (e.g. 2027-05-01T17:00:00+08:00)")
    return moment.timestamp()


class OpenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    siren: SirenId
    cause: str = Field(min_length=1, max_length=2000)
    priority: Priority = "normal"
    assignee: str | None = Field(default=None, min_length=1, max_length=64)
    due: datetime | None = None
    faults: list[str] | None = Field(default=None, max_length=64,
                                     description="faults the siren must stop reporting; "
                                     "default: those it reports now")
    silent_test: bool = Field(default=False, description="verify with a silent test even "
                              "if no fault of the audio chain is named")
    alert_id: int | None = Field(default=None, ge=1, le=2**53)


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: State | None = None
    assignee: str | None = Field(default=None, min_length=1, max_length=64)
    priority: Priority | None = None
    due: datetime | None = None
    note: str | None = Field(default=None, min_length=1, max_length=2000)


@router.get("/workorders", response_model=list[WorkOrderOut])
def list_orders(gateway: GatewayDep, _: Viewer, state: State | None = None,
                siren: QueryText = None, assignee: QueryText = None) -> list[dict[str, Any]]:
    """Orders not closed first (most urgent, then oldest), then the latest closed ones."""
    return gateway.work_orders.query(state, siren, assignee)


@router.post("/workorders", status_code=201, response_model=WorkOrderOut)
async def open_order(body: OpenBody, gateway: GatewayDep, who: Technician) -> dict[str, Any]:
    alert = None
    if body.alert_id is not None:
        found = gateway.alerts.get(body.alert_id)
        if found is None:
            raise HTTPException(404, f"no alert {body.alert_id}")
        alert = found.public()
    order = await gateway.work_orders.open(
        who, body.siren, body.cause, priority=body.priority, assignee=body.assignee,
        due_at=_epoch(body.due), faults=body.faults, silent_test=body.silent_test, alert=alert)
    return order.public()


@router.get("/workorders/{order_id}", response_model=WorkOrderOut)
async def get_order(order_id: RowId, gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    return (await gateway.work_orders.get(order_id)).public()


@router.patch("/workorders/{order_id}", response_model=WorkOrderOut)
async def update_order(order_id: RowId, body: UpdateBody, gateway: GatewayDep,
                       who: Technician) -> dict[str, Any]:
    """Assign, note, or move it: open -> assigned -> in_progress -> resolved; the siren then
    moves it to verified, or back to reopened with its evidence."""
    order = await gateway.work_orders.update(
        who, order_id, state=body.state, assignee=body.assignee, priority=body.priority,
        due_at=_epoch(body.due), note=body.note)
    return order.public()

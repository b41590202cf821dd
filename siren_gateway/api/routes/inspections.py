"""Seasonal inspections: plans, their tasks, and completing a task with its checklist."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.api.deps import GatewayDep, Operator, Technician, Viewer
from siren_gateway.api.limits import Name, QueryText, RowId
from siren_gateway.api.schemas import InspectionPlanOut, InspectionTaskOut

router = APIRouter(tags=["inspections"])


class ItemBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    result: Literal["ok", "fault", "not_applicable"]
    note: str = Field(default="", max_length=2000)


class CompleteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: dict[str, ItemBody] = Field(max_length=100, description="every checklist item's "
                                       "result, by item id")
    notes: str = Field(default="", max_length=4000)


@router.get("/inspections/plans", response_model=list[InspectionPlanOut])
def plans(gateway: GatewayDep, _: Viewer) -> list[dict[str, Any]]:
    return gateway.inspections.plan_list()


@router.post("/inspections/plans/{plan_id}/run", status_code=201,
             response_model=list[InspectionTaskOut])
async def run_now(plan_id: Name, gateway: GatewayDep, who: Operator) -> list[dict[str, Any]]:
    """An extra round of the plan now (e.g. before a typhoon): a task per target siren, due
    like the season's. 409 while a round of the plan is open and not yet overdue."""
    return [task.public() for task in await gateway.inspections.run_now(who, plan_id)]


@router.get("/inspections/tasks", response_model=list[InspectionTaskOut])
def tasks(gateway: GatewayDep, _: Viewer, state: Literal["open", "done"] | None = None,
          siren: QueryText = None, plan: QueryText = None, overdue: bool | None = None
          ) -> list[dict[str, Any]]:
    """Open tasks first (earliest due first), then the latest done ones."""
    return gateway.inspections.query(state, siren, plan, overdue)


@router.post("/inspections/tasks/{task_id}/complete", response_model=InspectionTaskOut)
async def complete(task_id: RowId, body: CompleteBody, gateway: GatewayDep,
                   who: Technician) -> dict[str, Any]:
    """Each item's result and note; the gateway adds the siren's own evidence (faults, battery,
    link, its latest silent test) as it is at this moment."""
    task = await gateway.inspections.complete(
        who, task_id, {k: (v.result, v.note) for k, v in body.items.items()}, body.notes)
    return task.public()

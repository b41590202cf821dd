from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.activation.model import ActivationRequest, Targets
from siren_gateway.api.deps import Activator, GatewayDep, Operator, Viewer
from siren_gateway.api.limits import MAX_SIRENS, MAX_ZONES, RowId, SirenId, ZoneId
from siren_gateway.api.schemas import ActivationOut, ActivationSummaryOut, PreviewOut

router = APIRouter(tags=["activations"])


class TargetsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sirens: list[SirenId] = Field(default=[], max_length=MAX_SIRENS)
    zones: list[ZoneId] = Field(default=[], max_length=MAX_ZONES)
    all: bool = False


class ActivationBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    targets: TargetsBody
    klass: Literal["emergency", "exercise", "test"] = Field(alias="class")
    action: Literal["sound", "silent_test"] = "sound"
    signal: str | None = Field(default=None, max_length=64)
    start_at: datetime | None = Field(default=None, description="timezone-aware; default: now "
                                      "plus the synchronisation lead")
    confirmation_token: str | None = Field(default=None, max_length=128)

    def to_request(self) -> ActivationRequest:
        if self.start_at is not None and self.start_at.tzinfo is None:
            raise HTTPException(422, "start_at needs a time zone (e.g. 2026-09-18T10:00:00+08:00)")
        return ActivationRequest(
            Targets(tuple(self.targets.sirens), tuple(self.targets.zones), self.targets.all),
            self.klass, self.action, self.signal, self.start_at, self.confirmation_token)



@router.post("/activations/preview", response_model=PreviewOut,
             response_model_exclude_unset=True)
async def preview(body: ActivationBody, gateway: GatewayDep, who: Activator) -> dict[str, Any]:
    request = body.to_request()
    await gateway.work_orders.check_technician_request(who, request,
                                                       gateway.inspections.open_sirens())
    return await gateway.activations.preview(who, request)


@router.post("/activations", status_code=201, response_model=ActivationOut,
             response_model_exclude_unset=True)
async def create(body: ActivationBody, gateway: GatewayDep, who: Activator) -> dict[str, Any]:
    """Operators: any activation. Technicians: a silent test of sirens they have an open work
    order for, nothing else (403, audited)."""
    request = body.to_request()
    await gateway.work_orders.check_technician_request(who, request,
                                                       gateway.inspections.open_sirens())
    activation = await gateway.activations.activate(who, request)
    return activation.report()


@router.get("/activations", response_model=list[ActivationSummaryOut])
async def list_activations(gateway: GatewayDep, _: Viewer,
                           limit: Annotated[int, Query(ge=1, le=500)] = 50
                           ) -> list[dict[str, Any]]:
    return await gateway.activations.list(limit)


@router.get("/activations/{activation_id}", response_model=ActivationOut,
            response_model_exclude_unset=True)
async def get_activation(activation_id: RowId, gateway: GatewayDep, _: Viewer
                         ) -> dict[str, Any]:
    activation = await gateway.activations.get(activation_id)
    if activation is None:
        raise HTTPException(404, f"no activation {activation_id}")
    return activation.report()


@router.post("/activations/{activation_id}/cancel", response_model=ActivationOut,
             response_model_exclude_unset=True)
async def cancel(activation_id: RowId, gateway: GatewayDep, who: Operator) -> dict[str, Any]:
    activation = await gateway.activations.cancel(who, activation_id)
    return activation.report()

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.activation.model import Targets
from siren_gateway.api.deps import GatewayDep, Operator, Viewer
from siren_gateway.api.limits import Name
from siren_gateway.api.routes.activations import TargetsBody
from siren_gateway.api.schemas import ClockSetOut, CommandsOut, SirenDetailOut, SirenOut
from siren_gateway.model import CommandKind, utc_now

router = APIRouter(tags=["sirens"])


@router.get("/sirens", response_model=list[SirenOut])
def list_sirens(gateway: GatewayDep, _: Viewer) -> list[dict[str, Any]]:
    return gateway.fleet.public()


@router.get("/sirens/{siren_id}", response_model=SirenDetailOut,
            response_model_exclude_unset=True)
async def get_siren(
    siren_id: Name,
    gateway: GatewayDep,
    _: Viewer,
    history_minutes: Annotated[float, Query(gt=0, le=60 * 24 * 366)] = 60,
    history_limit: Annotated[int, Query(ge=0, le=10_000)] = 500,
    history_resolution_s: Annotated[float | None, Query(gt=0, le=86400 * 31)] = None,
) -> dict[str, Any]:
    state = gateway.fleet.get(siren_id)
    if state is None:
        raise HTTPException(404, f"no siren with id {siren_id!r}")
    since = utc_now() - timedelta(minutes=history_minutes)
    history = (await gateway.telemetry.history(siren_id, since, history_limit,
                                               history_resolution_s) if history_limit else [])
    return state.as_dict() | {"history": history}


@router.post("/sirens/set-clock", response_model=ClockSetOut)
async def set_clocks(body: TargetsBody, gateway: GatewayDep, who: Operator) -> dict[str, Any]:
    """Set the controllers' clocks to the gateway's (inhibited sirens too: it makes no sound)."""
    targets = Targets(tuple(body.sirens), tuple(body.zones), body.all)
    return await gateway.activations.set_clocks(who, targets)


OperatorCommand = Literal["reset_faults", "arm", "disarm"]
Comment = Annotated[str, Field(min_length=3, max_length=500,
                               description="why: goes into the audit log")]


class SirenCommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: OperatorCommand
    comment: Comment


class CommandsBody(SirenCommandBody):
    targets: TargetsBody


async def _run(gateway: GatewayDep, who: Operator, command: str, targets: Targets,
               comment: str) -> dict[str, Any]:
    return await gateway.commands.run(who, CommandKind(command), targets, comment)


@router.post("/sirens/{siren_id}/commands", response_model=CommandsOut)
async def siren_command(siren_id: Name, body: SirenCommandBody, gateway: GatewayDep,
                        who: Operator) -> dict[str, Any]:
    """Reset latched faults, arm or disarm one siren; confirmed from its own status."""
    return await _run(gateway, who, body.command, Targets(sirens=(siren_id,)), body.comment)


@router.post("/commands", response_model=CommandsOut)
async def commands(body: CommandsBody, gateway: GatewayDep, who: Operator) -> dict[str, Any]:
    """The same for sirens, zones or all: each siren's outcome is confirmed separately."""
    targets = Targets(tuple(body.targets.sirens), tuple(body.targets.zones), body.targets.all)
    return await _run(gateway, who, body.command, targets, body.comment)

"""The asset register: every siren's record, one siren's with its history, and edits (admin)."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.api.deps import Admin, GatewayDep, Viewer
from siren_gateway.api.limits import Name
from siren_gateway.api.schemas import AssetDetailOut, AssetOut

router = APIRouter(tags=["assets"])


class AssetPatch(BaseModel):
    """The fields to set; a field sent as null is cleared, one left out is kept."""

    model_config = ConfigDict(extra="forbid")
    serial_number: str | None = Field(default=None, min_length=1, max_length=64)
    model: str | None = Field(default=None, min_length=1, max_length=120)
    installed_on: date | None = None
    installer: str | None = Field(default=None, min_length=1, max_length=120)
    mount_height_m: float | None = Field(default=None, ge=0, le=200)
    battery_capacity_ah: float | None = Field(default=None, gt=0, le=10_000)
    notes: str | None = Field(default=None, max_length=4000)


@router.get("/assets", response_model=list[AssetOut])
def all_assets(gateway: GatewayDep, _: Viewer) -> list[dict[str, Any]]:
    return gateway.assets.all()


@router.get("/assets/{siren_id}", response_model=AssetDetailOut)
async def asset(siren_id: Name, gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    """The record, what the siren shows of itself now (firmware, last values), and every
    change to the record, newest first."""
    return gateway.assets.view(siren_id) | {"history": await gateway.assets.history(siren_id)}


@router.patch("/assets/{siren_id}", response_model=AssetDetailOut)
async def edit_asset(siren_id: Name, body: AssetPatch, gateway: GatewayDep,
                     who: Admin) -> dict[str, Any]:
    """Set fields of the record (audited; kept in its history). The rated sound level is the
    site file's (`rated_db_c`): it drives the coverage model, so it changes with the file."""
    view = await gateway.assets.update(who, siren_id, body.model_dump(mode="json",
                                                                       exclude_unset=True))
    return view | {"history": await gateway.assets.history(siren_id)}

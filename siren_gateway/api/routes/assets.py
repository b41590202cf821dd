"""The asset register: every siren's record, one siren's with its history, and edits (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from siren_gateway.api.deps import Admin, GatewayDep, Viewer
from siren_gateway.api.limits import Name
from siren_gateway.api.schemas import AssetDetailOut, AssetOut
from siren_gateway.config.site import AssetConfig

router = APIRouter(tags=["assets"])


@router.get("/assets", response_model=list[AssetOut])
def all_assets(gateway: GatewayDep, _: Viewer) -> list[dict[str, Any]]:
    return gateway.assets.all()


@router.get("/assets/{siren_id}", response_model=AssetDetailOut)
async def asset(siren_id: Name, gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    """The record, what the siren shows of itself now (firmware, last values), and every
    change to the record, newest first."""
    return gateway.assets.view(siren_id) | {"history": await gateway.assets.history(siren_id)}


@router.patch("/assets/{siren_id}", response_model=AssetDetailOut)
async def edit_asset(siren_id: Name, body: AssetConfig, gateway: GatewayDep,
                     who: Admin) -> dict[str, Any]:
    """Set the fields sent (null clears one; those left out are kept), checked like the site
    file's; audited and kept in the record's history. The rated sound level is the site file's
    (`rated_db_c`): it drives the coverage model, so it changes with the file."""
    view = await gateway.assets.update(who, siren_id, body.model_dump(mode="json",
                                                                       exclude_unset=True))
    return view | {"history": await gateway.assets.history(siren_id)}

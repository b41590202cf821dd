from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from siren_gateway.api.deps import GatewayDep, Viewer
from siren_gateway.api.schemas import SignalOut

router = APIRouter(tags=["signals"])


@router.get("/signals", response_model=list[SignalOut])
def list_signals(gateway: GatewayDep, _: Viewer) -> list[dict[str, Any]]:
    return [signal.model_dump() | {"duration_s": signal.duration_s}
            for signal in gateway.site.signals.values()]

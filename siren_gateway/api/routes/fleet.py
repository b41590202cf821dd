"""The fleet at a glance: what the wall display shows in large figures, and the last day's
curve of sirens online and with faults."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Query

from siren_gateway.api.deps import GatewayDep, Viewer
from siren_gateway.api.schemas import FleetHistoryOut, FleetSummaryOut
from siren_gateway.live.fleet import STATUS_CLASSES, Reachability
from siren_gateway.model import utc_now

router = APIRouter(tags=["fleet"])


@router.get("/fleet/summary", response_model=FleetSummaryOut)
def summary(gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    """Counts over every siren, now: ready to sound, with faults, offline, sounding, out of
    service, and each status class of the map."""
    states = list(gateway.fleet.states.values())
    classes = Counter(state.status_class for state in states)
    ready = sum(1 for state in states if gateway.coverage.can_sound(state))
    return {
        "at": utc_now().isoformat(), "total": len(states), "ready": ready,
        "ready_share": round(ready / len(states), 4) if states else 0.0,
        "with_faults": sum(1 for s in states if s.faults and not s.config.inhibited),
        "offline": sum(1 for s in states if s.reachability in (Reachability.OFFLINE,
                                                               Reachability.UNKNOWN)),
        "sounding": classes["sounding"], "inhibited": classes["inhibited"],
        "classes": {name: classes[name] for name in STATUS_CLASSES},
    }


@router.get("/fleet/history", response_model=FleetHistoryOut)
async def history(gateway: GatewayDep, _: Viewer,
                  hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24,
                  points: Annotated[int, Query(ge=2, le=1000)] = 97) -> dict[str, Any]:
    """Sirens online and with a fault over the last hours, from the stored alerts."""
    return await gateway.history.fleet_series(hours, points)

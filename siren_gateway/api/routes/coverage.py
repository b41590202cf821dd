"""Audible coverage: now, what-if, and siting (siren_gateway/coverage, docs/coverage.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from siren_gateway.api.deps import GatewayDep, Operator, Viewer
from siren_gateway.api.schemas import CoverageLayerOut, CoverageOut, SitingOut, WhatIfOut
from siren_gateway.coverage.engine import Candidate, CoverageEngine
from siren_gateway.gateway import Gateway

router = APIRouter(tags=["coverage"])

MAX_CANDIDATES = 2000


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    rated_db_c: float | None = Field(default=None, ge=60, le=150)
    id: str | None = Field(default=None, min_length=1, max_length=64)

    def candidate(self) -> Candidate:
        return Candidate(self.lat, self.lon, self.rated_db_c, self.id)


class WhatIfBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    remove: list[str] = Field(default=[], max_length=10_000)
    add: list[Point] = Field(default=[], max_length=1000)
    levels: dict[str, float] = Field(default={}, max_length=10_000)  # siren -> dB(C) at 30 m

    @model_validator(mode="after")
    def _levels_in_range(self) -> WhatIfBody:
        if any(not 60 <= level <= 150 for level in self.levels.values()):
            raise ValueError("levels are dB(C) at 30 m, 60 to 150")
        return self


class SitingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidates: list[Point] | None = Field(default=None, max_length=MAX_CANDIDATES)
    zone: str | None = Field(default=None, max_length=64)  # or search a zone on a grid
    spacing_m: float = Field(default=250.0, ge=10, le=10_000)
    # of the sirens to site (default: coverage.default_rated_db_c)
    rated_db_c: float | None = Field(default=None, ge=60, le=150)
    k: int = Field(default=3, ge=1, le=20)

    @model_validator(mode="after")
    def _one_source(self) -> SitingBody:
        if (self.candidates is None) == (self.zone is None):
            raise ValueError("give either candidates or a zone to search")
        return self


def _engine(gateway: Gateway) -> CoverageEngine:
    if not gateway.coverage.enabled:
        raise HTTPException(404, "coverage is off: no zone in the site file has an area")
    return gateway.coverage


@router.get("/coverage", response_model=CoverageOut,
            response_model_exclude_unset=True)
def coverage_now(gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    """Per zone and for the district: the share of the area that would hear the alarm from
    the sirens able to sound now, and with every siren healthy."""
    return gateway.coverage.summary()


@router.get("/coverage/layer", response_model=CoverageLayerOut,
            response_model_exclude_unset=True)
def coverage_layer(gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    """The coverage raster for the map (sampled down) and the zones' outlines."""
    return _engine(gateway).layer()


@router.post("/coverage/what-if", response_model=WhatIfOut)
async def what_if(body: WhatIfBody, gateway: GatewayDep, _: Operator) -> dict[str, Any]:
    """The coverage that would result from removing sirens, adding some, or changing levels."""
    engine = _engine(gateway)
    return await engine.what_if(body.remove, body.levels, [p.candidate() for p in body.add])


@router.post("/coverage/siting", response_model=SitingOut,
             response_model_exclude_unset=True)
async def siting(body: SitingBody, gateway: GatewayDep, _: Operator) -> dict[str, Any]:
    """The coverage gain of each candidate site, and the best `k` chosen one after another."""
    engine = _engine(gateway)
    if body.zone is not None:
        try:
            candidates = engine.grid_candidates(body.zone, body.spacing_m, MAX_CANDIDATES)
        except KeyError:
            raise HTTPException(404, f"no zone {body.zone!r} with an area") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
    else:
        candidates = [p.candidate() for p in body.candidates or []]
    if body.rated_db_c is not None:
        candidates = [Candidate(c.lat, c.lon, c.rated_db_c or body.rated_db_c, c.id)
                      for c in candidates]
    return await engine.siting(candidates, body.k)

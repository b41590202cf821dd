"""Test plans and their occurrences: CRUD (admin), skip and run-now (operator), reports."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import ValidationError

from siren_gateway.api.deps import Admin, GatewayDep, Operator, Viewer, csv_download
from siren_gateway.api.limits import Name, OccurrenceKey, RowId
from siren_gateway.api.schemas import NextOccurrenceOut, OccurrenceOut, PlanDetailOut, PlanOut, ReportOut
from siren_gateway.config.plans import PlanConfig, plan_problems
from siren_gateway.gateway import Gateway
from siren_gateway.scheduling.reports import report_csv_rows

router = APIRouter(tags=["schedules"])



def _validated(gateway: Gateway, body: dict[str, Any]) -> PlanConfig:
    """The same checks as the site file: the plan's own shape, then what it refers to."""
    try:
        plan = PlanConfig.model_validate(body)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from None
    site = gateway.site
    problems = plan_problems(plan, site.signals, {s.id for s in site.config.sirens},
                             {z.id for z in site.config.zones})
    if problems:
        raise HTTPException(422, [str(p) for p in problems])
    return plan


def _public(gateway: Gateway, plan: PlanConfig) -> dict[str, Any]:
    return plan.model_dump(mode="json", by_alias=True) | {
        "source": gateway.scheduler.source(plan.id)}


@router.get("/schedules", response_model=list[PlanOut])
async def list_plans(gateway: GatewayDep, who: Viewer) -> list[dict[str, Any]]:
    return [_public(gateway, p) for p in gateway.scheduler.all_plans()]


@router.post("/schedules", status_code=201, response_model=PlanOut)
async def create_plan(body: dict[str, Any], gateway: GatewayDep, who: Admin) -> dict[str, Any]:
    plan = _validated(gateway, body)
    return _public(gateway, await gateway.scheduler.save_plan(who, plan, create=True))


@router.get("/schedules/{plan_id}", response_model=PlanDetailOut)
async def get_plan(plan_id: Name, gateway: GatewayDep, who: Viewer) -> dict[str, Any]:
    plan = gateway.scheduler.plan(plan_id)
    occurrences = await gateway.scheduler.occurrences(plan_id, limit=50)
    return _public(gateway, plan) | {"occurrences": occurrences}


@router.put("/schedules/{plan_id}", response_model=PlanOut)
async def update_plan(plan_id: Name, body: dict[str, Any], gateway: GatewayDep,
                      who: Admin) -> dict[str, Any]:
    plan = _validated(gateway, body | {"id": plan_id})
    return _public(gateway, await gateway.scheduler.save_plan(who, plan, create=False))


@router.delete("/schedules/{plan_id}", status_code=204)
async def delete_plan(plan_id: Name, gateway: GatewayDep, who: Admin) -> Response:
    await gateway.scheduler.delete_plan(who, plan_id)
    return Response(status_code=204)


@router.get("/schedules/{plan_id}/next", response_model=list[NextOccurrenceOut])
async def next_occurrences(plan_id: Name, gateway: GatewayDep, who: Viewer,
                           count: Annotated[int, Query(ge=1, le=100)] = 5
                           ) -> list[dict[str, Any]]:
    return gateway.scheduler.preview(plan_id, count)


@router.get("/schedules/{plan_id}/occurrences", response_model=list[OccurrenceOut])
async def plan_occurrences(plan_id: Name, gateway: GatewayDep, who: Viewer,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> list[dict[str, Any]]:
    gateway.scheduler.plan(plan_id)
    return await gateway.scheduler.occurrences(plan_id, limit)


@router.post("/schedules/{plan_id}/occurrences/{occurrence}/skip", response_model=OccurrenceOut)
async def skip(plan_id: Name, occurrence: OccurrenceKey, gateway: GatewayDep,
               who: Operator) -> dict[str, Any]:
    """`occurrence`: its id, or its start time (ISO 8601 with offset) for one further ahead."""
    return await gateway.scheduler.skip(who, plan_id, occurrence)


@router.post("/schedules/{plan_id}/run-now", status_code=201, response_model=OccurrenceOut)
async def run_now(plan_id: Name, gateway: GatewayDep, who: Operator) -> dict[str, Any]:
    return await gateway.scheduler.run_now(who, plan_id)


@router.get("/reports/{occurrence_id}.csv", response_class=Response, responses={
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "one row per siren and step"}})
async def report_csv(occurrence_id: RowId, gateway: GatewayDep, who: Viewer) -> Response:
    report = await gateway.scheduler.report(occurrence_id)
    return csv_download(report_csv_rows(report), f"occurrence-{occurrence_id}.csv")


@router.get("/reports/{occurrence_id}", response_model=ReportOut)
async def report_json(occurrence_id: RowId, gateway: GatewayDep, who: Viewer) -> dict[str, Any]:
    return await gateway.scheduler.report(occurrence_id)

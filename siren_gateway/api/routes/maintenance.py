"""A siren's timeline, and the monthly maintenance report (JSON, CSV, a printable page).

Registered before the schedules' routes: `/reports/maintenance` must not be read as an
occurrence's report.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from siren_gateway.api.deps import GatewayDep, Viewer, csv_download
from siren_gateway.api.limits import Name
from siren_gateway.api.schemas import MaintenanceReportOut, TimelineEntryOut
from siren_gateway.maintenance.history import report_csv_rows, report_html

router = APIRouter(tags=["maintenance"])
Month = Annotated[str, Query(pattern=r"^(19[7-9]\d|2[01]\d\d|2200)-(0[1-9]|1[0-2])$",
                             description="YYYY-MM (1970 to 2200), in the site's time zone")]


@router.get("/sirens/{siren_id}/timeline", response_model=list[TimelineEntryOut])
async def timeline(siren_id: Name, gateway: GatewayDep, _: Viewer,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
    """Newest first: alerts, work-order moves, inspections and activations of one siren."""
    return await gateway.history.timeline(siren_id, limit)


@router.get("/reports/maintenance.csv", response_class=Response, responses={
    200: {"content": {"text/csv": {"schema": {"type": "string"}}},
          "description": "one row per siren, then the total"}})
async def report_csv(month: Month, gateway: GatewayDep, _: Viewer) -> Response:
    report = await gateway.history.monthly_report(month)
    return csv_download(report_csv_rows(report), f"maintenance-{month}.csv")


@router.get("/reports/maintenance.html", response_class=Response, responses={
    200: {"content": {"text/html": {"schema": {"type": "string"}}},
          "description": "a page to print"}})
async def report_page(month: Month, request: Request, gateway: GatewayDep, _: Viewer
                      ) -> HTMLResponse:
    report = await gateway.history.monthly_report(month)
    # An absolute address: the dashboard shows this page from a blob, where "/..." resolves
    # to nothing.
    stylesheet = str(request.url_for("dashboard", path="/report.css"))
    return HTMLResponse(report_html(report, gateway.site.config.site.name, stylesheet))


@router.get("/reports/maintenance", response_model=MaintenanceReportOut)
async def report_json(month: Month, gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    """Availability, failures, MTTR and MTBF per siren, zone and district; inspections."""
    return await gateway.history.monthly_report(month)

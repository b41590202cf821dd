"""A siren's history, and the monthly maintenance figures drawn from it.

The timeline merges what is stored of one siren: its alerts (faults, offline, thresholds), its
work orders and their moves, its inspections and its activations with their results.

Availability is the share of the month (up to now) in which the siren was online, armed and
free of faults of its audio chain, from the stored alerts of those rules (an alert is raised
when the condition starts and cleared when it ends). A failure is a work order opened from an
alert; the mean time to repair is from an order's opening to its verification (by the siren),
over the orders verified in the month; the mean time between failures is the available time
divided by the failures.
"""

from __future__ import annotations

import asyncio
import html
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from siren_gateway.alerts.model import Alert
from siren_gateway.config.site import Catalogue
from siren_gateway.errors import Invalid, NotFound
from siren_gateway.maintenance.model import OrderState
from siren_gateway.runtime.clock import Clock, iso_utc
from siren_gateway.store.base import Store

MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# Beside each siren's audio-chain faults: it could not sound while offline or disarmed.
DOWN_RULES = frozenset({"offline", "disarmed"})
CSV_COLUMNS = ("zone", "siren", "name", "availability", "down_h", "failures", "repaired",
               "mttr_h", "mtbf_h", "orders_open", "inspections", "inspections_done",
               "inspections_overdue")


def month_bounds(month: str, zone: ZoneInfo) -> tuple[float, float]:
    """[start, end) of a month in the site's time zone, as Unix times."""
    found = MONTH.match(month)
    if found is None:
        raise Invalid("month is YYYY-MM")
    year, number = int(found[1]), int(found[2])
    if not 1970 <= year <= 2200:
        raise Invalid("month: a year from 1970 to 2200")
    start = datetime(year, number, 1, tzinfo=zone)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=zone)
    return start.timestamp(), end.timestamp()


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


class SirenHistory:
    def __init__(self, catalogue: Catalogue, audio_faults: dict[str, frozenset[str]],
                 timezone: str, store: Store, clock: Clock,
                 fault_rules: frozenset[str] = frozenset()) -> None:
        self.catalogue = catalogue
        self.sirens = {s.id: s for s in catalogue.sirens}
        self.audio_faults = audio_faults
        self.zone = ZoneInfo(timezone)
        self.store = store
        self.clock = clock
        self.fault_rules = fault_rules  # the alert rules of faults the devices report

    async def timeline(self, siren_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Newest first: alerts raised and cleared, work-order moves, inspections made and
        completed, activations and the siren's result in each."""
        if siren_id not in self.sirens:
            raise NotFound(f"no siren {siren_id!r}")
        out: list[dict[str, Any]] = []
        for alert in await self.store.alerts.for_siren(siren_id, limit):
            out.append(_entry(alert.raised_at, "alert", alert.id, f"{alert.rule} raised",
                              {"severity": alert.severity, "message": alert.message}))
            if alert.cleared_at:
                out.append(_entry(alert.cleared_at, "alert", alert.id, f"{alert.rule} cleared"))
        for order in await self.store.work_orders.for_siren(siren_id, limit):
            for move in order.history:
                if "to" in move:
                    out.append({"at": move["at"], "kind": "work_order", "id": order.id,
                                "summary": f"work order {move['to']}",
                                "details": {"by": move["by"], "note": move.get("note", ""),
                                            "cause": order.cause}})
        for task in await self.store.inspections.for_siren(siren_id, limit):
            out.append(_entry(task.scheduled_at, "inspection", task.id,
                              f"inspection {task.plan_id} due", {"due_at": iso_utc(task.due_at)}))
            if task.completed_at:
                faults = sorted(k for k, v in task.results.items() if v["result"] == "fault")
                out.append(_entry(task.completed_at, "inspection", task.id,
                                  f"inspection {task.plan_id} done",
                                  {"by": task.completed_by, "faults": faults}))
        for at, by, diff in [c[1:] for c in await self.store.assets.changes(siren_id, limit)]:
            out.append(_entry(at, "asset", None, f"asset record: {', '.join(sorted(diff))}",
                              {"by": by, "changes": diff}))
        for act in await self.store.activations.for_siren(siren_id, limit):
            what = act["signal"] or act["action"]
            out.append(_entry(act["start_at"], "activation", act["id"],
                              f"{act['class']} {what}: {act['status']}",
                              {"reason": act["reason"], "requested_by": act["requested_by"]}))
        out.sort(key=lambda e: e["at"] or "", reverse=True)
        return out[:limit]

    async def fleet_series(self, hours: float, points: int) -> dict[str, Any]:
        """Sirens online and sirens with a fault over the last `hours`, at `points` evenly
        spaced moments, from the stored alerts (`offline` and the device-fault rules): what the
        alert engine saw, so a condition shorter than its rule's delay does not show."""
        until = self.clock.now()
        since = until - hours * 3600
        stored = await self.store.alerts.overlapping(since, until)
        # (computed on a worker thread: for a large fleet's month, long enough to be felt by
        # everything else the loop serves)
        return await asyncio.to_thread(self._sweep, stored, since, until, points)

    def _sweep(self, stored: list[Alert], since: float, until: float, points: int
               ) -> dict[str, Any]:
        alerts = [a for a in stored if a.siren_id in self.sirens
                  and (a.rule == "offline" or a.rule in self.fault_rules)]
        # One sweep over the alerts' starts and ends in time order, not every alert at every
        # point: a month of a large fleet's alerts at 1,000 points would hold the loop for
        # seconds.
        changes = sorted([(a.raised_at, 1, a) for a in alerts]
                         + [(a.cleared_at, -1, a) for a in alerts if a.cleared_at is not None],
                         key=lambda change: (change[0], -change[1]))  # (a start first)
        offline: dict[str, int] = {}  # siren -> its active offline alerts
        faulty: dict[str, int] = {}
        step = (until - since) / max(points - 1, 1)
        series, next_change = [], 0
        for i in range(points):
            at = since + i * step
            while next_change < len(changes) and changes[next_change][0] <= at:
                _, delta, alert = changes[next_change]
                counts = offline if alert.rule == "offline" else faulty
                siren = str(alert.siren_id)
                counts[siren] = counts.get(siren, 0) + delta
                if counts[siren] <= 0:
                    del counts[siren]
                next_change += 1
            series.append({"at": iso_utc(at), "online": len(self.sirens) - len(offline),
                           "with_faults": len(faulty)})
        return {"since": iso_utc(since), "until": iso_utc(until), "sirens": len(self.sirens),
                "points": series}

    async def monthly_report(self, month: str) -> dict[str, Any]:
        since, end = month_bounds(month, self.zone)
        until = min(end, self.clock.now())
        if until <= since:
            raise Invalid(f"{month} has not begun")
        alerts = await self.store.alerts.overlapping(since, until)
        orders = await self.store.work_orders.created_between(since - 366 * 86400, until)
        tasks = await self.store.inspections.scheduled_between(since, until)
        return await asyncio.to_thread(self._report, month, since, until, alerts, orders, tasks)

    def _report(self, month: str, since: float, until: float, alerts: list[Alert],
                orders: list[Any], tasks: list[Any]) -> dict[str, Any]:
        period = until - since
        # Each siren's own records, grouped once (not the whole month's records per siren).
        alerts_of: dict[str | None, list[Alert]] = {}
        for alert in alerts:
            alerts_of.setdefault(alert.siren_id, []).append(alert)
        orders_of: dict[str, list[Any]] = {}
        for order in orders:
            orders_of.setdefault(order.siren_id, []).append(order)
        tasks_of: dict[str, list[Any]] = {}
        for task in tasks:
            tasks_of.setdefault(task.siren_id, []).append(task)
        rows = [self._siren_row(siren_id, since, until, period, alerts_of.get(siren_id, []),
                                orders_of.get(siren_id, []), tasks_of.get(siren_id, []))
                for siren_id in self.sirens]
        zones: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            for zone_id in self.sirens[row["siren"]].zones or ["(none)"]:
                zones.setdefault(zone_id, []).append(row)
        return {"month": month, "timezone": str(self.zone), "from": iso_utc(since),
                "until": iso_utc(until), "hours": round(period / 3600, 2),
                "total": _totals(rows), "zones": {z: _totals(r) for z, r in zones.items()},
                "sirens": rows}

    def _siren_row(self, siren_id: str, since: float, until: float, period: float,
                   alerts: list[Alert], mine: list[Any], siren_tasks: list[Any]
                   ) -> dict[str, Any]:
        """One siren's figures from its own alerts, work orders and inspection tasks."""
        down_rules = DOWN_RULES | self.audio_faults.get(siren_id, frozenset())
        down = union_length([(max(a.raised_at, since), min(a.cleared_at or until, until))
                             for a in alerts if a.rule in down_rules])
        failures = [o for o in mine if o.alert_id is not None and o.created_at >= since]
        repaired = [o for o in mine if o.verified_at is not None and since <= o.verified_at < until]
        repairs_h = [(o.verified_at - o.created_at) / 3600 for o in repaired]
        up_h = (period - down) / 3600
        siren = self.sirens[siren_id]
        return {
            "siren": siren_id, "name": siren.name, "zones": list(siren.zones),
            "availability": round(1 - down / period, 6), "down_h": round(down / 3600, 3),
            "up_h": round(up_h, 3),
            "failures": len(failures), "repaired": len(repaired),
            "repair_hours": [round(h, 3) for h in repairs_h],
            "mttr_h": round(sum(repairs_h) / len(repairs_h), 3) if repairs_h else None,
            "mtbf_h": round(up_h / len(failures), 3) if failures else None,
            "orders_open": sum(1 for o in mine if o.state not in (OrderState.VERIFIED,
                                                                  OrderState.CANCELLED)),
            "inspections": len(siren_tasks),
            "inspections_done": sum(1 for t in siren_tasks if t.state == "done"),
            "inspections_overdue": sum(1 for t in siren_tasks if t.overdue),
        }


def _entry(at: float, kind: str, ident: int | None, summary: str,
           details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"at": iso_utc(at), "kind": kind, "id": ident, "summary": summary,
            "details": details or {}}


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A group's figures: availability averaged over its sirens; MTTR over all its repairs."""
    repairs = [h for row in rows for h in row["repair_hours"]]
    failures = sum(row["failures"] for row in rows)
    up_h = sum(row["up_h"] for row in rows)
    return {
        "sirens": len(rows),
        "availability": round(sum(r["availability"] for r in rows) / len(rows), 6)
        if rows else None,
        "down_h": round(sum(r["down_h"] for r in rows), 3), "failures": failures,
        "repaired": len(repairs),
        "mttr_h": round(sum(repairs) / len(repairs), 3) if repairs else None,
        "mtbf_h": round(up_h / failures, 3) if failures and up_h else None,
        "orders_open": sum(r["orders_open"] for r in rows),
        "inspections": sum(r["inspections"] for r in rows),
        "inspections_done": sum(r["inspections_done"] for r in rows),
        "inspections_overdue": sum(r["inspections_overdue"] for r in rows),
    }


def report_csv_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per siren and zone, then the district's total."""
    rows: list[list[Any]] = [list(CSV_COLUMNS)]
    for row in report["sirens"]:
        rows.append([" ".join(row["zones"]), row["siren"], row["name"],
                     *(row[c] for c in CSV_COLUMNS[3:])])
    total = report["total"]
    rows.append(["TOTAL", "", f"{total['sirens']} sirens",
                 *(total[c] for c in CSV_COLUMNS[3:])])
    return rows


def report_html(report: dict[str, Any], site_name: str, stylesheet: str) -> str:
    """A page to print: the figures per siren and the total; no script, and its one style sheet
    from the gateway (the API's content policy refuses inline styles)."""
    def cell(value: Any) -> str:
        return f"<td>{'' if value is None else html.escape(str(value))}</td>"

    rows = report_csv_rows(report)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "\n".join(f"<tr>{''.join(cell(v) for v in r)}</tr>" for r in rows[1:])
    title = html.escape(f"{site_name}: maintenance report {report['month']}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<link rel='stylesheet' href='{html.escape(stylesheet)}'></head><body>"
            f"<h1>{title}</h1><p>{html.escape(report['from'] or '')} to "
            f"{html.escape(report['until'] or '')} ({report['timezone']}); availability = "
            "share of the time online, armed and free of audio-chain faults; MTTR = opened "
            "to verified by the siren; MTBF = available hours per failure.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"
            "</body></html>")

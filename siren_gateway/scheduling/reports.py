"""The report of one occurrence (the 9·18 figure: how many sirens sounded), as JSON and CSV rows."""

from __future__ import annotations

from typing import Any

from siren_gateway.config.plans import PlanConfig
from siren_gateway.config.site import SirenConfig
from siren_gateway.scheduling.model import Occurrence


def build_report(occ: Occurrence, plan: PlanConfig | None, reports: dict[int, dict[str, Any]],
                 sirens_of_site: list[SirenConfig]) -> dict[str, Any]:
    """Per siren and step the result, and the sounding rate per zone and overall (鸣响率)."""
    sirens = {s.id: s for s in sirens_of_site}
    steps_out: list[dict[str, Any]] = []
    warnings: list[str] = []
    per_siren: dict[str, dict[str, Any]] = {}
    for key in sorted(occ.steps, key=int):
        record = occ.steps[key]
        step_plan = plan.steps[int(key)] if plan and int(key) < len(plan.steps) else None
        report = reports.get(int(record.get("activation_id", -1)))
        step_out: dict[str, Any] = {
            "step": int(key), "signal": step_plan.signal if step_plan else None,
            "action": step_plan.action if step_plan else None,
            "activation_id": record.get("activation_id"), "error": record.get("error"),
            "counts": report["counts"] if report else None,
            "sounding_rate": report["sounding_rate"] if report else None,
            "targeted": report["targeted"] if report else None,
            "commanded": report["commanded"] if report else None}
        if report is not None:
            confirmed = report["counts"]["sounded"] + report["counts"]["passed"]
            step_out["confirmed"] = confirmed
            # A step that sounded on fewer sirens than it commanded is said so, whatever the
            # occurrence's state: "done" means it ran, not that every siren sounded.
            step_out["complete"] = confirmed == report["commanded"]
            if confirmed < report["commanded"]:
                warnings.append(f"step {int(key) + 1} ({step_out['signal'] or step_out['action']})"
                                f" sounded on {confirmed} of {report['commanded']} commanded "
                                "sirens")
        elif record.get("error"):
            step_out["complete"] = False
            warnings.append(f"step {int(key) + 1} did not run: {record['error']}")
        steps_out.append(step_out)
        for result in (report or {}).get("sirens", []):
            entry = per_siren.setdefault(result["siren_id"], {"steps": []})
            entry["steps"].append({"step": int(key), "status": result["status"],
                                   "reason": result["reason"]})
    ok = {"sounded", "passed"}
    zones: dict[str, dict[str, int]] = {}
    for siren_id, entry in per_siren.items():
        statuses = [s["status"] for s in entry["steps"]]
        if all(s == "excluded" for s in statuses):
            overall = "excluded"
        elif all(s in ok for s in statuses):
            overall = "sounded"
        else:
            first_bad = next(s for s in entry["steps"] if s["status"] not in ok)
            overall = first_bad["status"]
            entry["reason"] = first_bad["reason"]
        entry["result"] = overall
        cfg = sirens.get(siren_id)
        entry["name"] = cfg.name if cfg else siren_id
        entry["zones"] = list(cfg.zones) if cfg else []
        for zone in entry["zones"] or ["(none)"]:
            counts = zones.setdefault(zone, {"commanded": 0, "sounded": 0})
            if overall != "excluded":
                counts["commanded"] += 1
                counts["sounded"] += overall == "sounded"
    commanded = sum(1 for e in per_siren.values() if e["result"] != "excluded")
    sounded = sum(1 for e in per_siren.values() if e["result"] == "sounded")
    totals = {status: sum(1 for e in per_siren.values() if e["result"] == status)
              for status in ("sounded", "failed", "no_feedback", "excluded", "preempted",
                             "cancelled")}
    return {
        "occurrence": occ.public(plan),
        "plan": {"id": occ.plan_id, "name": plan.name if plan else occ.plan_id,
                 "class": plan.klass if plan else None},
        "steps": steps_out,
        "complete": not warnings and bool(steps_out),
        "warnings": warnings,
        "counts": totals,
        "commanded": commanded,
        "sounding_rate": round(sounded / commanded, 4) if commanded else None,
        "zones": {zone: c | {"sounding_rate": round(c["sounded"] / c["commanded"], 4)
                             if c["commanded"] else None} for zone, c in sorted(zones.items())},
        "sirens": [{"siren_id": sid} | per_siren[sid] for sid in sorted(per_siren)],
    }


def report_csv_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = [["occurrence", "plan", "scheduled_local", "siren_id", "name", "zones", "result",
             "step", "step_status", "reason"]]
    occ = report["occurrence"]
    for siren in report["sirens"]:
        for step in siren["steps"]:
            rows.append([str(occ["id"]), report["plan"]["id"], occ["scheduled_local"],
                         siren["siren_id"], siren["name"], " ".join(siren["zones"]),
                         siren["result"], str(step["step"]), step["status"], step["reason"]])
    return rows

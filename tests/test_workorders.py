"""Work orders over real sockets against the simulators: opened by an alert, resolved by a
technician, and verified (or reopened, with the evidence) by the siren itself."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from simulators.sitegen import generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import Site
from siren_gateway.errors import Invalid
from siren_gateway.gateway import Gateway
from siren_gateway.live.bus import MaintenanceChanged
from siren_gateway.maintenance.history import SirenHistory, report_csv_rows, report_html
from siren_gateway.maintenance.model import OrderState, WorkOrder
from siren_gateway.model import Command, CommandKind
from siren_gateway.store.sqlite import SqliteStore
from tests.conftest import (
    FakeClock,
    SimulatedDistrict,
    StartDistrict,
    scripted_alert,
    shanghai,
    wait_until,
    with_users,
)
from tests.test_activation import Api
from tests.test_command_truth import set_read_only

StartGateway = Callable[[Site], Awaitable[Gateway]]


def maintenance_site(**maintenance: Any) -> dict[str, Any]:
    # (the simulated silent test takes 6 s)
    site = with_users(generate_site(3, poll_interval_s=0.25, timeout_s=0.3),
                      confirm_timeout_s=10.0, sync_lead_s=1.0, confirm_poll_interval_s=0.25,
                      duplicate_window_s=1.0)
    site["alerts"] = {"clear_after_s": 1.0, "offline_after_s": 2.0}
    site["maintenance"] = {"settle_s": 1.0} | maintenance
    return site


@pytest.fixture
async def district(start_district: StartDistrict, gateways: StartGateway
                   ) -> AsyncIterator[tuple[SimulatedDistrict, Gateway]]:
    simulated = start_district(maintenance_site())
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 3, 10, "all online")
    yield simulated, gateway


def orders_of(gateway: Gateway, siren: str) -> list[dict[str, Any]]:
    return gateway.work_orders.query(siren_id=siren)


async def test_a_repair_is_verified_by_the_siren_not_by_the_technician(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    simulated, gateway = district
    operator = await Api(gateway).login("operator")
    technician = await Api(gateway).login("technician")

    # An amplifier fault (critical, audio chain) opens an order by itself.
    await simulated.control.inject("s00002", "amplifier_fault", amplifier=2)
    await wait_until(lambda: bool(orders_of(gateway, "s00002")), 5, "order opened by the alert")
    order = orders_of(gateway, "s00002")[0]
    assert (order["rule"], order["faults"], order["audio"], order["priority"], order["state"]) \
        == ("amplifier_fault", ["amplifier_fault"], True, "urgent", "open")
    assert order["alert_id"] == next(a["id"] for a in gateway.alerts.query()
                                     if a["rule"] == "amplifier_fault")
    path = f"/api/workorders/{order['id']}"
    handed = await technician.patch(path, {"assignee": "operator"})
    assert handed.status_code == 403  # a technician takes an order, never gives one away
    assigned = await operator.patch(path, {"assignee": "technician"})
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["state"] == "assigned"
    assert (await technician.patch(path, {"state": "in_progress"})).status_code == 200
    by_hand = await technician.patch(path, {"state": "verified"})
    assert by_hand.status_code == 409 and "only the siren" in by_hand.text

    # Resolved while the siren still reports the fault: reopened, with what it showed.
    resolved = await technician.patch(path, {"state": "resolved", "note": "looked at it"})
    assert resolved.status_code == 200, resolved.text
    await wait_until(lambda: orders_of(gateway, "s00002")[0]["state"] == "reopened", 5,
                     "reopened by the siren's own status")
    reopened = orders_of(gateway, "s00002")[0]
    assert "amplifier_fault" in reopened["evidence"]["faults"]
    assert reopened["history"][-1]["by"] == "siren"
    assert reopened["evidence"]["reachability"] == "online"

    # The technician can sound nothing, and test only the siren it works on.
    audible = await technician.post("/api/activations", {
        "targets": {"sirens": ["s00002"]}, "class": "test", "signal": "growl_test"})
    assert audible.status_code == 403, audible.text
    other = await technician.post("/api/activations", {
        "targets": {"sirens": ["s00001"]}, "class": "test", "action": "silent_test"})
    assert other.status_code == 403, other.text
    zone = await technician.post("/api/activations", {
        "targets": {"all": True}, "class": "test", "action": "silent_test"})
    assert zone.status_code == 403, zone.text
    audit = (await Api(gateway).login("admin"))
    entries = (await audit.get("/api/audit", limit=50)).json()
    refusals = [e for e in entries if e["action"] == "activation.request"
                and e["username"] == "technician" and e["outcome"].startswith("refused")]
    assert len(refusals) == 3, entries

    # The part is replaced, the latched fault reset: the technician's own silent test passes.
    await simulated.control.inject("s00002", "amplifier_fault", active=False, amplifier=2)
    await gateway.links["s00002"].send(Command(CommandKind.RESET_FAULTS))
    await wait_until(lambda: not gateway.fleet.states["s00002"].faults, 5, "fault gone")
    test = await technician.post("/api/activations", {
        "targets": {"sirens": ["s00002"]}, "class": "test", "action": "silent_test"})
    assert test.status_code == 201, test.text
    report = await technician.finished(test.json()["id"])
    assert report["sirens"][0]["status"] == "passed", report

    # Resolved again: the fault stays gone for the settling time and the verifier's silent
    # test passes, so the siren itself verifies the repair.
    assert (await technician.patch(path, {"state": "resolved"})).status_code == 200
    await wait_until(lambda: orders_of(gateway, "s00002")[0]["state"] == "verified", 30,
                     "verified by the siren")
    verified = orders_of(gateway, "s00002")[0]
    assert verified["evidence"]["silent_test"]["status"] == "passed"
    assert verified["evidence"]["faults"] == []
    assert [h.get("to") for h in verified["history"] if "to" in h] == [
        "open", "assigned", "in_progress", "resolved", "reopened", "resolved", "verified"]
    # The siren's timeline tells the story: the fault, the order's moves, the tests.
    async def story() -> bool:
        entries = (await technician.get("/api/sirens/s00002/timeline")).json()
        summaries = {e["summary"] for e in entries}
        return {"amplifier_fault raised", "work order reopened", "work order verified",
                "test silent_test: passed"} <= summaries

    await wait_until(story, 5, "the timeline shows fault, order and tests")
    # A closed order stays closed to the technician's hands, and its siren too.
    late = await technician.post("/api/activations", {
        "targets": {"sirens": ["s00002"]}, "class": "test", "action": "silent_test"})
    assert late.status_code == 403


async def test_orders_by_hand_survive_a_restart_and_moves_are_checked(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated = start_district(maintenance_site())
    first = await gateways(simulated.site())
    await wait_until(lambda: first.fleet.counts()["online"] == 3, 10, "all online")
    operator = await Api(first).login("operator")
    viewer = await Api(first).login("viewer")
    body = {"siren": "s00001", "cause": "cabinet door hinge broken", "priority": "low"}
    assert (await viewer.post("/api/workorders", body)).status_code == 403
    created = await operator.post("/api/workorders", body)
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["state"] == "open" and order["faults"] == [] and not order["audio"]
    path = f"/api/workorders/{order['id']}"
    assert (await operator.patch(path, {"state": "assigned"})).status_code == 422  # nobody
    wrong = await operator.patch(path, {"state": "reopened", "priority": "urgent",
                                        "note": "should not stay"})
    assert wrong.status_code == 409, wrong.text
    unchanged = (await operator.get(path)).json()  # a refused request changes nothing
    assert unchanged["priority"] == "low" and unchanged["notes"] == []
    noted = await operator.patch(path, {"note": "parts ordered", "assignee": "technician"})
    assert noted.json()["notes"][0]["text"] == "parts ordered"
    assert (await operator.post("/api/workorders", {"siren": "nope", "cause": "x"})
            ).status_code == 404
    await first.stop()

    second = await gateways(simulated.site())
    again = (await (await Api(second).login("viewer")).get(path)).json()
    assert again["state"] == "assigned" and again["assignee"] == "technician"
    assert again["notes"][0]["text"] == "parts ordered"
    # With no fault to wait for, a resolved order is verified once the siren answers healthy
    # for the settling time.
    await wait_until(lambda: second.fleet.counts()["online"] == 3, 10, "all online")
    technician = await Api(second).login("technician")
    assert (await technician.patch(path, {"state": "resolved"})).status_code == 200
    await wait_until(lambda: orders_of(second, "s00001")[0]["state"] == "verified", 10,
                     "verified")


async def test_an_inspection_plan_makes_tasks_once_which_go_overdue_and_alert(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    """Tasks for every siren at the plan's local time (once, across a restart), completed with
    the checklist and the siren's own evidence; the one left undone goes overdue and alerts."""
    zone = ZoneInfo("Asia/Shanghai")
    # The occurrence a minute ago (local time), so the real silent test below comes after it.
    fire = math.floor(time.time() / 60) * 60 - 60
    local = datetime.fromtimestamp(fire, zone)
    site = maintenance_site(inspection_plans=[{
        "id": "pre-flood", "name": "Before the flood season", "name_zh": "汛前检查",
        "recurrence": {"type": "cron", "expression": f"{local.minute} {local.hour} * * *"},
        "due_after_days": 0.002}])  # 172.8 s
    simulated = start_district(site)
    started: list[Gateway] = []

    async def start(clock: FakeClock) -> Gateway:
        gateway = Gateway(simulated.site())
        gateway.inspections.clock = clock  # the rest keeps real time: sirens, activations
        await gateway.start()
        started.append(gateway)
        return gateway

    try:
        await inspect_the_district(start, fire, local)
    finally:
        for gateway in started:
            await gateway.stop()


async def inspect_the_district(start: Callable[[FakeClock], Awaitable[Gateway]], fire: float,
                               local: datetime) -> None:
    clock = FakeClock(fire - 30)
    first = await start(clock)
    await wait_until(lambda: first.fleet.counts()["online"] == 3, 10, "all online")
    plans = (await (await Api(first).login("viewer")).get("/api/inspections/plans")).json()
    assert plans[0]["sirens"] == 3 and plans[0]["next"].startswith(local.date().isoformat())
    assert not first.inspections.query()
    await clock.advance(60, step=5)
    await wait_until(lambda: len(first.inspections.query()) == 3, 5, "a task per siren")
    tasks = first.inspections.query()
    assert {t["scheduled_at"] for t in tasks} == {datetime.fromtimestamp(fire, UTC).isoformat()}
    assert tasks[0]["checklist"][0]["text_zh"] == "机柜密封、干燥，无锈蚀"
    await first.stop()

    second = await start(clock)  # a restart at the same moment makes nothing twice
    await clock.advance(5, step=1)
    assert len(second.inspections.query()) == 3
    await wait_until(lambda: second.fleet.counts()["online"] == 3, 10, "all online")

    # The technician may silent-test a siren under inspection, then completes its task.
    technician = await Api(second).login("technician")
    task = next(t for t in second.inspections.query() if t["siren_id"] == "s00002")
    test = await technician.post("/api/activations", {
        "targets": {"sirens": ["s00002"]}, "class": "test", "action": "silent_test"})
    assert test.status_code == 201, test.text
    await technician.finished(test.json()["id"])
    items = {item["id"]: {"result": "ok"} for item in task["checklist"]}
    partial = await technician.post(f"/api/inspections/tasks/{task['id']}/complete",
                                    {"items": {"mounting": {"result": "ok"}}})
    assert partial.status_code == 422 and "missing" in partial.text
    items["earthing_lightning"] = {"result": "fault", "note": "earth strap corroded"}
    done = await technician.post(f"/api/inspections/tasks/{task['id']}/complete",
                                 {"items": items, "notes": "all else fine"})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["state"] == "done" and body["completed_by"] == "technician"
    assert body["results"]["earthing_lightning"] == {"result": "fault",
                                                      "note": "earth strap corroded"}
    evidence = body["evidence"]
    assert evidence["reachability"] == "online" and "battery_voltage" in evidence["values"]
    assert evidence["silent_test"]["status"] == "passed"
    again = await technician.post(f"/api/inspections/tasks/{task['id']}/complete",
                                  {"items": items})
    assert again.status_code == 409

    # Past the due time the two left undone go overdue, and alert until they are done.
    await clock.advance(200, step=10)

    def overdue_alerts() -> set[str]:
        return {a["siren_id"] for a in second.alerts.query()
                if a["rule"] == "inspection_overdue" and a["state"] != "cleared"}

    await wait_until(lambda: overdue_alerts() == {"s00001", "s00003"}, 5, "overdue alerts")
    late = next(t for t in second.inspections.query() if t["siren_id"] == "s00001")
    assert late["overdue"]
    assert (await technician.post(f"/api/inspections/tasks/{late['id']}/complete",
                                  {"items": items})).status_code == 200
    await wait_until(lambda: overdue_alerts() == {"s00003"}, 5, "its alert cleared")


async def test_availability_and_repair_times_match_a_scripted_history(tmp_path: Path) -> None:
    """March 2027 (744 h), scripted in the store: overlapping outages count once, a fault not on
    the audio chain not at all, what started in February or lasts into April only in part."""
    site = load_site(write_site(generate_site(3), tmp_path / "site.yaml"))
    store = SqliteStore(tmp_path / "history.db")
    await store.start()
    try:
        await store.alerts.write([
            scripted_alert(1, "offline", "s00001", "2027-03-10 00:00", "2027-03-10 12:00"),
            scripted_alert(2, "amplifier_fault", "s00001", "2027-03-10 06:00", "2027-03-11 06:00"),
            scripted_alert(3, "door_open", "s00001", "2027-03-20 00:00", "2027-03-20 05:00"),
            scripted_alert(4, "offline", "s00002", "2027-02-27 00:00", "2027-03-01 02:00"),
            scripted_alert(5, "amplifier_fault", "s00003", "2027-03-31 20:00", None),
            scripted_alert(6, "disarmed", "s00002", "2027-03-15 00:00", "2027-03-15 04:00")])

        def order(i: int, siren: str, created: str, verified: str | None) -> WorkOrder:
            return WorkOrder(i, siren, "fault", "urgent",
                             OrderState.VERIFIED if verified else OrderState.OPEN,
                             shanghai(created), "alert:1", alert_id=i,
                             verified_at=shanghai(verified) if verified else None)

        await store.work_orders.write([
            order(1, "s00001", "2027-03-10 06:00", "2027-03-11 08:00"),  # 26 h
            order(2, "s00002", "2027-02-27 00:00", "2027-03-01 03:00"),  # 51 h, a Feb failure
            order(3, "s00003", "2027-03-31 20:00", None)])
        audio = {s.id: frozenset({"amplifier_fault"}) for s in site.config.sirens}
        history = SirenHistory(site.catalogue, audio, "Asia/Shanghai", store,
                               FakeClock(shanghai("2027-04-02 00:00")))
        report = await history.monthly_report("2027-03")
        assert report["hours"] == 744
        rows = {row["siren"]: row for row in report["sirens"]}
        assert [rows[s]["down_h"] for s in ("s00001", "s00002", "s00003")] == [30, 6, 4]
        assert rows["s00001"]["availability"] == round(1 - 30 / 744, 6)
        assert (rows["s00001"]["failures"], rows["s00001"]["mttr_h"], rows["s00001"]["mtbf_h"]) \
            == (1, 26, 714)
        assert (rows["s00002"]["failures"], rows["s00002"]["mttr_h"]) == (0, 51)
        assert rows["s00003"]["orders_open"] == 1 and rows["s00003"]["mttr_h"] is None
        total = report["total"]
        assert (total["failures"], total["repaired"], total["mttr_h"], total["mtbf_h"]) \
            == (2, 2, 38.5, 1096)
        assert total["availability"] == round(1 - 40 / 2232, 6)
        table = list(csv.reader(io.StringIO(
            "\n".join(",".join(map(str, r)) for r in report_csv_rows(report)))))
        header, last = table[0], table[-1]
        assert last[0] == "TOTAL" and float(last[header.index("down_h")]) == 40
        assert float(last[header.index("mttr_h")]) == 38.5
        assert "<table>" in report_html(report, "test", "/dashboard/report.css")
        with pytest.raises(Invalid):
            await history.monthly_report("2027-13")
        timeline = await history.timeline("s00001")
        assert [e["summary"] for e in timeline[:2]] == ["door_open cleared", "door_open raised"]
    finally:
        await store.stop()


async def test_changes_while_the_database_refuses_writes_are_kept_and_stored_after(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    """A full or read-only disk: the order's change is answered and shown at once (announced
    once, not at every retry of its write), and reaches the disk when the disk takes writes."""
    _, gateway = district
    operator = await Api(gateway).login("operator")
    order = (await operator.post("/api/workorders", {"siren": "s00001", "cause": "lamp"})).json()
    heard = gateway.bus.subscribe("test", maxsize=100, kinds=(MaintenanceChanged,))
    await set_read_only(gateway, True)
    noted = await operator.patch(f"/api/workorders/{order['id']}",
                                 {"note": "written later", "assignee": "technician"})
    assert noted.status_code == 200 and noted.json()["state"] == "assigned"
    await asyncio.sleep(3)  # three ticks, each trying the write again
    stored = await gateway.store.work_orders.get(order["id"])
    assert stored is not None and stored.notes == []
    events = []
    while True:
        try:
            async with asyncio.timeout(0.1):
                events.append(await heard.get())
        except TimeoutError:
            break
    assert [(e.id, e.state) for e in events if isinstance(e, MaintenanceChanged)] == [
        (order["id"], "assigned")]
    await set_read_only(gateway, False)

    async def written() -> bool:
        again = await gateway.store.work_orders.get(order["id"])
        return again is not None and [n["text"] for n in again.notes] == ["written later"]

    await wait_until(written, 10, "the change stored once the disk takes writes")
    heard.close()

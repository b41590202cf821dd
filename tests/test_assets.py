"""The asset register over real sockets against the simulators: seeded by the site file, edited
by admins (audited, with history), the latest edit of a field winning across restarts; and the
time a siren spends disarmed counted against its availability."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from siren_gateway.gateway import Gateway
from tests.conftest import SimulatedDistrict, StartDistrict, wait_until
from tests.test_activation import Api
from tests.test_command_truth import set_read_only
from tests.test_workorders import StartGateway, maintenance_site


def edit_site_file(simulated: SimulatedDistrict, siren: str, **asset: Any) -> None:
    data = yaml.safe_load(simulated.site_file.read_text())
    entry = next(s for s in data["sirens"] if s["id"] == siren)
    entry["asset"] = dict(entry.get("asset") or {}) | asset
    simulated.site_file.write_text(yaml.safe_dump(data, allow_unicode=True))


async def test_the_register_is_seeded_by_the_site_file_edited_by_admins_and_kept(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site = maintenance_site()
    site["sirens"][0]["asset"] = {"serial_number": "HX-2024-0117", "model": "HX-600",
                                  "installed_on": "2024-05-01", "mount_height_m": 12}
    simulated = start_district(site)
    first = await gateways(simulated.site())
    await wait_until(lambda: first.fleet.counts()["online"] == 3, 10, "all online")
    viewer = await Api(first).login("viewer")
    record = (await viewer.get("/api/assets/s00001")).json()
    assert (record["serial_number"], record["model"], record["installed_on"]) == (
        "HX-2024-0117", "HX-600", "2024-05-01")
    assert record["battery_capacity_ah"] is None
    # What the siren says of itself comes from the device, not from the register.
    assert record["device"]["values"]["firmware"] == "SG-2.4.1"
    assert record["device"]["last_seen"] is not None and record["rated_db_c"] is not None
    assert [(h["by"], sorted(h["changes"])) for h in record["history"]] == [
        ("site file", ["installed_on", "model", "mount_height_m", "serial_number"])]
    assert len((await viewer.get("/api/assets")).json()) == 3

    operator = await Api(first).login("operator")
    refused = await operator.patch("/api/assets/s00001", {"serial_number": "X"})
    assert refused.status_code == 403
    admin = await Api(first).login("admin")
    assert (await admin.patch("/api/assets/s00001", {"mount_height_m": -1})).status_code == 422
    assert (await admin.patch("/api/assets/s00001", {"colour": "red"})).status_code == 422
    assert (await admin.patch("/api/assets/nope", {"model": "X"})).status_code == 404
    edited = await admin.patch("/api/assets/s00001", {
        "serial_number": "HX-2024-0117B", "battery_capacity_ah": 100, "notes": "new board"})
    assert edited.status_code == 200, edited.text
    newest = edited.json()["history"][0]
    assert newest["by"] == "admin" and newest["changes"]["serial_number"] == [
        "HX-2024-0117", "HX-2024-0117B"]
    # A disk that refuses the write: 503, and nothing changed, in memory or on disk.
    await set_read_only(first, True)
    refused = await admin.patch("/api/assets/s00001", {"model": "lost"})
    assert refused.status_code == 503, refused.text
    await set_read_only(first, False)
    assert first.assets.view("s00001")["model"] == "HX-600"
    audit = (await admin.get("/api/audit", action="asset.update")).json()
    assert audit[0]["username"] == "admin" and audit[0]["target"] == "siren:s00001"
    denied = (await admin.get("/api/audit", action="access.denied")).json()
    assert any(d["username"] == "operator" and "/api/assets/s00001" in d["target"]
               for d in denied)
    await first.stop()

    # The file unchanged: the admin's edit stands.
    second = await gateways(simulated.site())
    kept = first_record = second.assets.view("s00001")
    assert (kept["serial_number"], kept["battery_capacity_ah"]) == ("HX-2024-0117B", 100)
    await second.stop()

    # The file edited since: its new value wins for that field; the rest stands.
    edit_site_file(simulated, "s00001", model="HX-600S")
    third = await gateways(simulated.site())
    record = third.assets.view("s00001")
    assert (record["model"], record["serial_number"]) == ("HX-600S", "HX-2024-0117B")
    history = await third.assets.history("s00001")
    assert history[0]["by"] == "site file" and history[0]["changes"] == {
        "model": ["HX-600", "HX-600S"]}
    assert first_record["siren_id"] == "s00001"
    timeline = (await (await Api(third).login("viewer")).get(
        "/api/sirens/s00001/timeline")).json()
    assert [e["details"]["by"] for e in timeline if e["kind"] == "asset"] == [
        "site file", "admin", "site file"]


async def test_time_disarmed_for_maintenance_counts_against_availability(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site = maintenance_site()
    site["alerts"]["clear_after_s"] = 8.0  # disarmed for 8 s at least: 0.002 h
    simulated = start_district(site)
    gateway: Gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 3, 10, "all online")
    operator = await Api(gateway).login("operator")

    def disarmed_alert() -> dict[str, Any] | None:
        return next((a for a in gateway.alerts.query()
                     if a["rule"] == "disarmed" and a["siren_id"] == "s00003"), None)

    sent = await operator.post("/api/sirens/s00003/commands",
                               {"command": "disarm", "comment": "replacing the amplifier"})
    assert sent.json()["sirens"][0]["result"] == "confirmed", sent.text
    await wait_until(lambda: (disarmed_alert() or {}).get("state") == "active", 10,
                     "a disarmed alert")
    assert disarmed_alert()["severity"] == "info"  # type: ignore[index]
    sent = await operator.post("/api/sirens/s00003/commands",
                               {"command": "arm", "comment": "amplifier replaced"})
    assert sent.json()["sirens"][0]["result"] == "confirmed", sent.text
    await wait_until(lambda: (disarmed_alert() or {}).get("state") == "cleared", 20,
                     "the disarmed alert cleared (after clear_after_s)")
    await gateway.alerts.stop()  # flushed to the store, where the report reads it
    month = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    report = (await operator.get("/api/reports/maintenance", month=month)).json()
    rows = {row["siren"]: row for row in report["sirens"]}
    alert = disarmed_alert()
    assert alert is not None
    raised = datetime.fromisoformat(alert["raised_at"]).timestamp()
    cleared = datetime.fromisoformat(alert["cleared_at"]).timestamp()
    assert cleared - raised >= 8
    assert abs(rows["s00003"]["down_h"] - (cleared - raised) / 3600) <= 0.001
    assert rows["s00003"]["availability"] < 1 and rows["s00001"]["availability"] == 1

"""The schedule API: roles, validation, audit; the missed-test alert; notices over MQTT."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from simulators.sitegen import generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.gateway import Gateway
from siren_gateway.live.bus import ScheduleEvent
from tests.conftest import Mosquitto, wait_until, with_users
from tests.test_activation import Api

MONTHLY = {"id": "monthly", "name": "Monthly growl", "timezone": "Europe/Berlin",
           "recurrence": {"type": "monthly", "weekday": "wed", "nth": 1, "time": "10:00"},
           "steps": [{"offset_s": 0, "signal": "growl_test"}], "targets": {"zones": ["zone-1"]}}


async def make_gateway(tmp_path: Path, **extra: Any) -> Gateway:
    site = with_users(generate_site(3))
    site.update(extra)
    gateway = Gateway(load_site(write_site(site, tmp_path / "site.yaml",
                                           database=tmp_path / "g.db")))
    await gateway.start()
    return gateway


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = await make_gateway(tmp_path)
    yield gateway
    await gateway.stop()


async def as_user(gateway: Gateway, user: str) -> Api:
    return await Api(gateway).login(user)


async def test_roles_validation_and_audit(gateway: Gateway) -> None:
    viewer, operator, admin = [await as_user(gateway, u) for u in ("viewer", "operator", "admin")]
    try:
        assert (await viewer.post("/api/schedules", MONTHLY)).status_code == 403
        assert (await operator.post("/api/schedules", MONTHLY)).status_code == 403
        created = await admin.post("/api/schedules", MONTHLY)
        assert created.status_code == 201, created.text
        assert created.json()["source"] == "api"
        assert (await admin.post("/api/schedules", MONTHLY)).status_code == 409
        bad = await admin.post("/api/schedules", MONTHLY | {"id": "bad", "steps": [
            {"offset_s": 0, "signal": "tsunami"}]})
        assert bad.status_code == 422 and "unknown signal 'tsunami'" in bad.text
        overlapping = await admin.post("/api/schedules", MONTHLY | {"id": "overlap", "steps": [
            {"offset_s": 0, "signal": "growl_test"}, {"offset_s": 3, "signal": "growl_test"}]})
        assert overlapping.status_code == 422 and "played out" in overlapping.text
        upcoming = (await viewer.get("/api/schedules/monthly/next", count=3)).json()
        assert all(u["scheduled_local"][11:16] == "10:00" for u in upcoming)
        # operator: skip and run now; viewer may not
        first = upcoming[0]["scheduled_at"]
        assert (await viewer.post(f"/api/schedules/monthly/occurrences/{first}/skip")
                ).status_code == 403
        skipped = await operator.post(f"/api/schedules/monthly/occurrences/{first}/skip")
        assert skipped.status_code == 200 and skipped.json()["state"] == "skipped"
        assert (await viewer.post("/api/schedules/monthly/run-now")).status_code == 403
        ran = await operator.post("/api/schedules/monthly/run-now")
        assert ran.status_code == 201
        # admin edits and deletes
        changed = await admin.http.put("/api/schedules/monthly", json=MONTHLY | {
            "name": "Monthly growl (Thursdays)"}, headers=admin._headers())
        assert changed.status_code == 200 and changed.json()["name"].endswith("(Thursdays)")
        assert (await operator.http.delete("/api/schedules/monthly",
                                           headers=operator._headers())).status_code == 403
        assert (await admin.http.delete("/api/schedules/monthly",
                                        headers=admin._headers())).status_code == 204
        assert (await viewer.get("/api/schedules/monthly")).status_code == 404
        actions = [e["action"] for e in (await admin.get("/api/audit", limit=50)).json()]
        for action in ("schedule.create", "schedule.skip", "schedule.run_now",
                       "schedule.update", "schedule.delete"):
            assert action in actions, actions
    finally:
        for api in (viewer, operator, admin):
            await api.http.aclose()


async def test_site_file_plans_are_read_only_through_the_api(tmp_path: Path) -> None:
    gateway = await make_gateway(tmp_path, schedules=[MONTHLY])
    admin = await as_user(gateway, "admin")
    try:
        listed = (await admin.get("/api/schedules")).json()
        assert [(p["id"], p["source"]) for p in listed] == [("monthly", "config")]
        refused = await admin.http.put("/api/schedules/monthly", json=MONTHLY,
                                       headers=admin._headers())
        assert refused.status_code == 409 and "site file" in refused.text
    finally:
        await admin.http.aclose()
        await gateway.stop()


def missed_event(kind: str = "missed") -> ScheduleEvent:
    now = datetime.now(UTC)
    return ScheduleEvent(kind=kind, plan_id="monthly", plan_name="Monthly growl",
                         occurrence_id=7, scheduled_at=now, zones=("zone-1",), lead_s=None,
                         message="not started within the grace period", at=now)


async def test_a_missed_test_raises_an_alert_until_the_plan_next_runs(gateway: Gateway) -> None:
    gateway.bus.publish(missed_event())

    def missed() -> list[dict[str, Any]]:
        return [a for a in gateway.alerts.query() if a["rule"] == "scheduled_test_missed"]

    await wait_until(lambda: len(missed()) == 1 and missed()[0]["state"] == "active", 3, "raised")
    alert = missed()[0]
    assert alert["subject"] == "schedule:monthly" and alert["zones"] == ["zone-1"]
    assert "Monthly growl" in alert["message"] and alert["severity"] == "major"
    gateway.bus.publish(missed_event())  # the same plan again: still one alert
    await asyncio.sleep(0.3)
    assert len(missed()) == 1
    gateway.bus.publish(missed_event("done"))
    await wait_until(lambda: missed()[0]["state"] == "cleared", 3, "cleared")


async def test_notices_go_out_over_mqtt(broker: Mosquitto, tmp_path: Path) -> None:
    gateway = await make_gateway(tmp_path, alerts={"mqtt": {
        "host": "127.0.0.1", "port": broker.port, "topic": "t/alerts",
        "schedule_topic": "t/schedule"}})
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("t/schedule", qos=1)
            notice = missed_event("notice")
            gateway.bus.publish(notice)
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    body = json.loads(message.payload)
                    break
        assert body["kind"] == "notice" and body["plan_id"] == "monthly"
        assert body["scheduled_at"] == notice.scheduled_at.isoformat()
    finally:
        await gateway.stop()

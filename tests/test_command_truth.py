"""Exactly once, and the truth: lost replies, retries of failed alarms, busy sirens, a failing
disk, partial MQTT reports, operator commands, crashes between the record and the command.

Everything runs over real sockets against the simulators (and a real mosquitto); the
simulators' own record of every onset of sound is the truth each result is checked against.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from simulators.processes import GatewayProcess
from simulators.sitegen import generate_site
from siren_gateway.activation.model import Status, sequence_of
from siren_gateway.gateway import Gateway
from siren_gateway.live.bus import SampleReceived
from tests.conftest import (
    Mosquitto,
    SimulatedDistrict,
    StartDistrict,
    logged_in,
    wait_until,
    with_users,
)
from tests.test_activation import Api, StartGateway, by_siren
from tests.test_mqtt import PREFIX, mixed_site, started

FAST = {"sync_lead_s": 1.0, "confirm_timeout_s": 8.0, "confirm_poll_interval_s": 0.3,
        "delivery_grace_s": 2.0, "duplicate_window_s": 120}


async def onsets(control: Any, siren_id: str, sequence: int | None = None) -> list[dict[str, Any]]:
    truth = await control.truth(siren_id)
    return [o for o in truth["onsets"] if sequence is None or o["sequence"] == sequence]


async def with_api(start_district: StartDistrict, gateways: StartGateway,
                   site: dict[str, Any]) -> tuple[SimulatedDistrict, Gateway, Api]:
    """Simulators and a gateway for `site`, every siren online, and an operator's API."""
    simulated, gateway = await started(start_district, gateways, site)
    return simulated, gateway, await Api(gateway).login("operator")


@pytest.fixture
async def modbus_district(start_district: StartDistrict, gateways: StartGateway
                          ) -> AsyncIterator[tuple[SimulatedDistrict, Gateway, Api]]:
    district = await with_api(start_district, gateways, with_users(
        generate_site(4, poll_interval_s=1.0, timeout_s=0.5), **FAST))
    yield district
    await district[2].http.aclose()


async def sound(api: Api, sirens: list[str], klass: str = "test", signal_id: str = "growl_test",
                expect: int = 201) -> dict[str, Any]:
    body: dict[str, Any] = {"targets": {"sirens": sirens}, "class": klass, "signal": signal_id}
    if klass == "emergency":
        preview = await api.post("/api/activations/preview", body)
        assert preview.status_code == 200, preview.text
        body["confirmation_token"] = preview.json()["confirmation_token"]
    response = await api.post("/api/activations", body)
    assert response.status_code == expect, response.text
    result: dict[str, Any] = response.json()
    return result


# -- 1. delivery that is idempotent by construction -----------------------------------------

@pytest.mark.parametrize("fault", ["lost_reply", "garbage", "slow"])
async def test_a_write_whose_reply_is_lost_sounds_once_and_is_reported_sounded(
        fault: str, modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, _, api = modbus_district
    control = simulated.control
    options: dict[str, Any] = {"delay_s": 0.8} if fault == "slow" else {}
    await control.inject("s00001", fault, **options)
    created = await sound(api, ["s00001", "s00002"])
    if fault == "slow":
        await asyncio.sleep(0.3)  # the write is under way, its reply will come too late
    await asyncio.sleep(0.6)
    await control.inject("s00001", fault, active=False)  # later reads answer again
    report = await api.finished(created["id"])
    results = by_siren(report)
    assert results["s00001"]["status"] == "sounded", results["s00001"]
    assert results["s00001"]["sends"] == 1  # read back, never sent again
    assert results["s00002"]["status"] == "sounded"
    sequence = sequence_of(created["id"])
    for siren_id in ("s00001", "s00002"):
        assert len(await onsets(control, siren_id, sequence)) == 1, siren_id


async def test_a_command_that_never_arrived_is_sent_again_after_the_read_back(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    """no_response drops the request unexecuted: the read-back shows the old sequence."""
    simulated, gateway, api = modbus_district
    control = simulated.control
    await control.inject("s00003", "no_response")
    created = await sound(api, ["s00003"])

    def sends_timed_out() -> float:
        return gateway.instruments.registry.get_sample_value(
            "siren_gateway_command_round_trip_seconds_count",
            {"kind": "sound", "outcome": "timeout"}) or 0.0

    # Healed only once the first send has timed out, i.e. the device dropped it (waiting a
    # fixed 0.4 s instead once let a loaded run send it after the healing).
    await wait_until(lambda: sends_timed_out() >= 1, 10, "the first send timed out")
    await control.inject("s00003", "no_response", active=False)
    report = await api.finished(created["id"])
    result = by_siren(report)["s00003"]
    assert result["status"] == "sounded", result
    assert result["sends"] == 2  # the read-back proved the first never arrived
    assert len(await onsets(control, "s00003", sequence_of(created["id"]))) == 1


async def test_a_model_without_sequence_read_back_never_repeats_a_sound_command(
        start_district: StartDistrict, gateways: StartGateway, tmp_path: Path) -> None:
    from tests.test_modbus_integration import ALTERNATIVE_PROFILE

    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "acme-ls200.yaml").write_text(ALTERNATIVE_PROFILE, encoding="utf-8")
    site = with_users(generate_site(2, poll_interval_s=1.0, timeout_s=0.5), **FAST)
    for siren in site["sirens"]:
        siren["profile"] = "acme_ls200"
    simulated = start_district(site, profiles_dir=devices)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 2, 10, "online")
    api = await Api(gateway).login("operator")
    await simulated.control.inject("s00001", "lost_reply")
    created = await sound(api, ["s00001"])
    await asyncio.sleep(0.6)
    await simulated.control.inject("s00001", "lost_reply", active=False)
    report = await api.finished(created["id"])
    result = by_siren(report)["s00001"]
    assert result["sends"] == 1
    assert result["status"] == "sounded", result  # seen sounding with current: the status
    assert len(await onsets(simulated.control, "s00001")) == 1
    await api.http.aclose()


async def test_mqtt_lost_ack_is_confirmed_from_telemetry_without_waiting(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(mixed_site(broker, modbus=1, mqtt=2, interval_s=5.0, ack_timeout_s=4.0),
                      **FAST)
    simulated, gateway, api = await with_api(start_district, gateways, site)
    await simulated.control.inject("s00002", "lost_reply")  # carried out, never acknowledged
    created = await sound(api, ["s00002", "s00003"])
    report = await api.finished(created["id"])
    results = by_siren(report)
    for siren_id in ("s00002", "s00003"):
        assert results[siren_id]["status"] == "sounded", results[siren_id]
        assert len(await onsets(simulated.control, siren_id)) == 1
    # The telemetry that shows the sequence and the current decides, not the 4 s ack wait.
    assert results["s00002"]["confirm_latency_s"] < 1.5, results["s00002"]
    assert gateway.mqtt is not None and gateway.mqtt.stats.acks_inferred_from_telemetry >= 1
    await api.http.aclose()


# -- 2 and 3. duplicates that never block a needed alarm; busy means busy ---------------------

async def test_a_failed_emergency_is_sent_again_when_retried(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(mixed_site(broker, modbus=0, mqtt=2, interval_s=2.0, ack_timeout_s=1.0),
                      **FAST)
    simulated, gateway, api = await with_api(start_district, gateways, site)
    broker.stop()
    first = await sound(api, ["s00001", "s00002"], klass="emergency", signal_id="air_raid")
    report = await api.finished(first["id"], timeout_s=20)
    assert {r["status"] for r in report["sirens"]} == {"failed"}, report["sirens"]
    assert all("never delivered" in r["reason"] for r in report["sirens"])
    broker.start()
    assert gateway.mqtt is not None
    await wait_until(lambda: gateway.fleet.counts()["online"] == 2
                     and gateway.mqtt is not None and gateway.mqtt.stats.connected, 20,
                     "broker back, devices reporting")
    retry = await sound(api, ["s00001", "s00002"], klass="emergency", signal_id="air_raid")
    report = await api.finished(retry["id"], timeout_s=20)
    assert {r["status"] for r in report["sirens"]} == {"sounded"}, report["sirens"]
    assert retry["repeat_of"] is None  # its twin failed: not even a repeat
    for siren_id in ("s00001", "s00002"):
        assert len(await onsets(simulated.control, siren_id)) == 1
    await api.http.aclose()


async def test_duplicates_are_refused_only_while_the_twin_runs_or_has_sounded(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, gateway, api = modbus_district
    control = simulated.control
    first = await sound(api, ["s00001"])
    refused = await api.post("/api/activations", {"targets": {"sirens": ["s00001"]},
                                                  "class": "test", "signal": "growl_test"})
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail["activation_id"] == first["id"] and detail["activation_state"] == "running"
    assert f"activation {first['id']}" in detail["message"]
    # An emergency with a fresh confirmation is the operator's decision: a repeat, not refused.
    emergency = await sound(api, ["s00002"], klass="emergency", signal_id="air_raid")
    again = await sound(api, ["s00002"], klass="emergency", signal_id="air_raid")
    assert again["repeat_of"] == emergency["id"]
    audit = await gateway.audit.entries(action="activation.create", limit=5)
    assert audit[0]["details"]["repeat_of"] == emergency["id"]
    # A test whose twin failed (definite refusal) goes out again at once: the siren is free.
    await control.inject("s00003", "exception", code=4)
    failed = await sound(api, ["s00003"])
    report = await api.finished(failed["id"])
    assert by_siren(report)["s00003"]["status"] == "failed"
    await control.inject("s00003", "exception", active=False)
    retried = await sound(api, ["s00003"])  # neither "duplicate" nor "busy"
    report = await api.finished(retried["id"])
    assert by_siren(report)["s00003"]["status"] == "sounded"
    assert len(await onsets(control, "s00003")) == 1


async def test_an_all_clear_sent_by_mistake_does_not_block_the_air_raid_again(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, _, api = modbus_district
    raid = await sound(api, ["s00004"], klass="emergency", signal_id="air_raid")
    await wait_until(lambda: _sounded(api, raid["id"], "s00004"), 10, "air raid sounding")
    clear = await sound(api, ["s00004"], klass="emergency", signal_id="all_clear")
    await wait_until(lambda: _sounded(api, clear["id"], "s00004"), 10, "all-clear sounding")
    again = await sound(api, ["s00004"], klass="emergency", signal_id="air_raid")
    report = await api.finished(again["id"])
    assert by_siren(report)["s00004"]["status"] == "sounded"
    signals = [o["signal"] for o in await onsets(simulated.control, "s00004")]
    assert signals == ["air_raid", "all_clear", "air_raid"]


async def _sounded(api: Api, activation_id: int, siren_id: str) -> bool:
    report = (await api.get(f"/api/activations/{activation_id}")).json()
    return bool(by_siren(report)[siren_id]["status"] == "sounded")


# -- 5. storage faults never block an alarm -------------------------------------------------

async def set_read_only(gateway: Gateway, read_only: bool) -> None:
    """The database refuses every write, as on a full or read-only disk (SQLITE_READONLY)."""
    await gateway.db.run(lambda conn: conn.execute(f"PRAGMA query_only = {int(read_only)}"))


async def test_a_failing_disk_never_blocks_an_emergency_and_loses_nothing(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    _, gateway, api = modbus_district
    await set_read_only(gateway, True)
    login = await Api(gateway).login("operator")  # the audit write fails: login still works
    emergency = await sound(login, ["s00001", "s00002"], klass="emergency", signal_id="air_raid")
    test = await api.post("/api/activations", {"targets": {"sirens": ["s00003"]},
                                               "class": "test", "signal": "growl_test"})
    assert test.status_code == 503 and "database cannot be written" in test.text
    report = await api.finished(emergency["id"])
    assert {r["status"] for r in report["sirens"]} == {"sounded"}
    await wait_until(lambda: any(a.rule == "storage_failing" and a.state == "active"
                                 for a in gateway.alerts.alerts.values()), 5,
                     "storage_failing raised")
    assert gateway.audit.journal  # held, in order
    await set_read_only(gateway, False)
    await wait_until(lambda: not gateway.audit.journal, 10, "journal written")
    await wait_until(lambda: all(a.state == "cleared" for a in gateway.alerts.alerts.values()
                                 if a.rule == "storage_failing"), 10, "storage_failing cleared")
    rows = await gateway.audit.entries(limit=50)
    actions = [r["action"] for r in reversed(rows)]
    login_at = actions.index("auth.login", 1)  # the second login, made while failing
    assert actions[login_at:login_at + 4] == ["auth.login", "activation.preview",
                                             "activation.create", "activation.create"]
    stored = await gateway.db.run(lambda conn: conn.execute(
        "SELECT state FROM activations WHERE id = ?", (emergency["id"],)).fetchone())
    assert stored is not None
    # The refused test left nothing behind: no phantom activation, no busy siren.
    retried = await sound(api, ["s00003"])
    assert (await api.finished(retried["id"]))["counts"]["sounded"] == 1
    assert not [a for a in gateway.activations.activations.values()
                if a.state == "running" and not a.tasks]
    await login.http.aclose()


# -- 6. MQTT partial reports ----------------------------------------------------------------

async def test_a_partial_mqtt_report_keeps_what_it_leaves_out(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(mixed_site(broker, modbus=0, mqtt=1, interval_s=3.0), **FAST)
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 1, 15, "online")
    await simulated.control.inject("s00001", "door_open")
    state = gateway.fleet.states["s00001"]
    await wait_until(lambda: "door_open" in state.faults, 5, "door fault seen")
    samples = gateway.bus.subscribe("test: partial reports", kinds=(SampleReceived,))
    # As the device: a report of the power section only, and one with security.door_open null.
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for i, extra in enumerate([{}, {"security": {"door_open": None}}]):
            body = {"ts": round(time.time() + 1 + i, 3), "state": "idle",
                    "power": {"battery_v": 25.5 - i, "mains": True, "dc_ok": True}} | extra
            await client.publish(f"{PREFIX}/s00001/telemetry", json.dumps(body).encode(), qos=1)
            async with asyncio.timeout(5):
                while True:  # ours, not one of the simulator's own complete reports
                    event = await samples.get()
                    assert isinstance(event, SampleReceived)
                    if event.sample.values.get("battery_voltage") == 25.5 - i:
                        break
            ours = event.sample
            assert "door_open" in ours.faults  # never reported closed: still open
            assert ours.values["cabinet_door_open"] is True
            assert "cabinet_door_open" in ours.carried
    samples.close()
    await wait_until(lambda: "door_open" in state.faults, 5, "still open")
    # (the alert engine evaluates in batches, a fraction of a second apart)
    await wait_until(lambda: any(a.rule == "door_open" and a.state == "active"
                                 for a in gateway.alerts.alerts.values()), 5, "door alert")


# -- 7. operator commands -------------------------------------------------------------------

async def test_reset_arm_and_disarm_are_confirmed_from_the_device(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, gateway, api = modbus_district
    control = simulated.control
    state = gateway.fleet.states["s00001"]
    await control.inject("s00001", "amplifier_fault", amplifier=2)
    await wait_until(lambda: "amplifier_fault" in state.faults, 5, "fault latched")
    body = {"command": "reset_faults", "comment": "technician replaced the amplifier"}
    still_broken = (await api.post("/api/sirens/s00001/commands", body)).json()
    outcome = still_broken["sirens"][0]
    assert outcome["result"] == "not_confirmed" and "still reports" in outcome["reason"]
    await control.inject("s00001", "amplifier_fault", amplifier=2, active=False)  # repaired
    assert "amplifier_fault" in state.faults  # latched until reset
    repaired = (await api.post("/api/sirens/s00001/commands", body)).json()
    assert repaired["sirens"][0]["result"] == "confirmed", repaired
    assert "amplifier_fault" not in state.faults
    # Both exchanges were timed, and so were the polls that confirmed them.
    exposition = gateway.instruments.expose().decode()
    assert ('siren_gateway_command_round_trip_seconds_count{kind="reset_faults",outcome="ok"} '
            '2.0') in exposition
    polls_ok = next(line for line in exposition.splitlines()
                    if line.startswith('siren_gateway_poll_seconds_count{outcome="ok"}'))
    assert float(polls_ok.split()[-1]) >= 2
    no_comment = await api.post("/api/sirens/s00001/commands", {"command": "reset_faults"})
    assert no_comment.status_code == 422
    viewer = await Api(gateway).login("viewer")
    assert (await viewer.post("/api/sirens/s00001/commands", body)).status_code == 403
    # Disarm a zone's siren for maintenance: confirmed, then excluded from activations.
    disarm = (await api.post("/api/commands", {"command": "disarm", "comment": "work at pole",
                                               "targets": {"sirens": ["s00002"]}})).json()
    assert disarm["sirens"][0]["result"] == "confirmed", disarm
    preview = (await api.post("/api/activations/preview", {
        "targets": {"sirens": ["s00002", "s00003"]}, "class": "test",
        "signal": "growl_test"})).json()
    assert preview["excluded"] == [{"id": "s00002", "reason": "disarmed"}]
    arm = (await api.post("/api/sirens/s00002/commands", {"command": "arm",
                                                         "comment": "work done"})).json()
    assert arm["sirens"][0]["result"] == "confirmed"
    assert (await control.truth("s00002"))["values"]["armed"] is True
    entries = await gateway.audit.entries(limit=10)
    assert {"sirens.reset_faults", "sirens.disarm", "sirens.arm"} <= {e["action"] for e in entries}
    assert any(e["details"].get("comment") == "work at pole" for e in entries)
    await viewer.http.aclose()


async def test_a_maintenance_command_waits_for_the_proof_of_a_sounding(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    """A controller reports the sequence of the last command it carried out: a reset landing
    between a sound command and its confirmation replaced it, and sirens that sounded were
    reported without feedback (the soak's reset of every siren each minute did this to whole
    activations). A maintenance command waits for the proof instead."""
    simulated, gateway, api = modbus_district
    start = datetime.now(UTC) + timedelta(seconds=3)  # on the sirens' clocks: sent at once
    created = await api.post("/api/activations", {
        "targets": {"sirens": ["s00001", "s00002"]}, "class": "test", "signal": "growl_test",
        "start_at": start.isoformat()})
    assert created.status_code == 201, created.text
    activation = gateway.activations.activations[created.json()["id"]]
    await wait_until(lambda: all(activation.results[s].status is Status.ACCEPTED
                                 for s in ("s00001", "s00002")), 5, "both commands taken")
    # A maintainer resets every siren's latched faults while the test is being proven.
    reset = (await api.post("/api/commands", {"command": "reset_faults", "comment": "monthly",
                                              "targets": {"all": True}})).json()
    report = await api.finished(activation.id)
    assert {s: r["status"] for s, r in by_siren(report).items()} == {
        "s00001": "sounded", "s00002": "sounded"}, report
    outcomes = {o["siren_id"]: o for o in reset["sirens"]}
    assert {s: o["result"] for s, o in outcomes.items()} == dict.fromkeys(
        ("s00001", "s00002", "s00003", "s00004"), "confirmed"), reset
    assert outcomes["s00001"]["after_activation"] == activation.id
    assert outcomes["s00002"]["after_activation"] == activation.id
    assert outcomes["s00003"]["after_activation"] is None  # not in the test: not held back
    for siren_id in ("s00001", "s00002"):  # sounded once, and the reset did reach it after
        assert len(await onsets(simulated.control, siren_id)) == 1
        assert (await simulated.control.truth(siren_id))["last_command_sequence"] == 0
    # A clock set waits the same way, then sets the clock to the second it is sent in.
    created = await api.post("/api/activations", {
        "targets": {"sirens": ["s00003"]}, "class": "test", "signal": "growl_test",
        "start_at": (datetime.now(UTC) + timedelta(seconds=3)).isoformat()})
    second = gateway.activations.activations[created.json()["id"]]
    await wait_until(lambda: second.results["s00003"].status is Status.ACCEPTED, 5, "taken")
    clocks = (await api.post("/api/sirens/set-clock", {"sirens": ["s00003", "s00004"]})).json()
    assert clocks["after_activation"] == {"s00003": second.id}, clocks
    assert sorted(clocks["set"]) == ["s00003", "s00004"]
    assert (await api.finished(second.id))["sirens"][0]["status"] == "sounded"


async def test_a_maintenance_command_waiting_on_a_siren_that_died_is_bounded(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    """A siren that takes the command and then stops answering holds a reset back only until
    the activation decides it (no feedback, at its confirmation window); the reset then goes
    out, fails on the dead siren, and is reported with the activation it waited for."""
    simulated, gateway, api = modbus_district
    start = datetime.now(UTC) + timedelta(seconds=3)
    created = await api.post("/api/activations", {
        "targets": {"sirens": ["s00001"]}, "class": "test", "signal": "growl_test",
        "start_at": start.isoformat()})
    assert created.status_code == 201, created.text
    activation = gateway.activations.activations[created.json()["id"]]
    await wait_until(lambda: activation.results["s00001"].status is Status.ACCEPTED, 5, "taken")
    await simulated.control.inject("s00001", "no_response")
    reset = (await api.post("/api/commands", {"command": "reset_faults", "comment": "monthly",
                                              "targets": {"sirens": ["s00001", "s00002"]}})).json()
    result = activation.results["s00001"]
    assert result.status is Status.NO_FEEDBACK, result  # decided before the reset went out
    outcomes = {o["siren_id"]: o for o in reset["sirens"]}
    assert outcomes["s00001"]["after_activation"] == activation.id
    assert outcomes["s00001"]["result"] != "confirmed", reset
    assert outcomes["s00002"] == dict(outcomes["s00002"], result="confirmed",
                                      after_activation=None), reset


# -- 8. alerts ------------------------------------------------------------------------------

async def test_a_siren_silent_in_an_exercise_raises_the_maintenance_alert(
        modbus_district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, gateway, api = modbus_district
    await simulated.control.inject("s00004", "all_amplifiers_fault")
    created = await sound(api, ["s00004"], klass="exercise", signal_id="growl_test")
    await api.finished(created["id"])
    await wait_until(lambda: any(a.rule == "activation_failed" and a.siren_id == "s00004"
                                 and a.state == "active" for a in gateway.alerts.alerts.values()),
                     5, "activation_failed for an exercise")


async def test_the_offline_alert_of_an_mqtt_siren_says_when_it_last_answered(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(mixed_site(broker, modbus=0, mqtt=1, interval_s=0.5), **FAST)
    site["alerts"] = {"offline_after_s": 2.0, "clear_after_s": 0}
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 1, 15, "online")
    await simulated.control.inject("s00001", "silent_disconnect")

    def offline_alert() -> str | None:
        return next((a.message for a in gateway.alerts.alerts.values()
                     if a.rule == "offline" and a.state == "active"), None)

    await wait_until(lambda: offline_alert() is not None, 15, "offline alert")
    message = offline_alert() or ""
    assert "last answered at" in message and "never" not in message, message


# -- 1, 9 and the crash window: a real gateway process, killed -------------------------------

async def finished(http: httpx.AsyncClient, activation_id: int, timeout_s: float = 30
                   ) -> dict[str, Any]:
    report: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal report
        response = await http.get(f"/api/activations/{activation_id}")
        report = response.json() if response.status_code == 200 else {"state": "running"}
        return bool(report["state"] != "running")

    await wait_until(done, timeout_s, f"activation {activation_id} finished", 0.2)
    return report


async def test_a_crash_between_the_record_and_the_first_command_still_sounds_every_siren_once(
        broker: Mosquitto, start_district: StartDistrict) -> None:
    # A wide late-start allowance: the subject is "once", not how fast a loaded machine
    # restarts (past the allowance the truthful answer is "failed"; tested below).
    site = with_users(mixed_site(broker, modbus=3, mqtt=2, interval_s=2.0),
                      **(FAST | {"sync_lead_s": 4.0, "delivery_grace_s": 30.0}))
    simulated = start_district(site)
    gateway = GatewayProcess(simulated.site_file, failpoints="activation.recorded")
    gateway.start()
    try:
        http = await logged_in(gateway)
        sirens = [s["id"] for s in site["sirens"]]
        await wait_until(lambda: _all_online(http, len(sirens)), 20, "all online")
        with pytest.raises(httpx.HTTPError):  # the process dies with the request
            await http.post("/api/activations", json={
                "targets": {"all": True}, "class": "test", "signal": "growl_test"})
        assert gateway.process is not None and gateway.process.wait(10) == 70
        await http.aclose()
        for siren_id in sirens:
            assert (await simulated.control.truth(siren_id))["commands_received"] == 0
        gateway.start(failpoints="")  # at once, as a supervisor would
        http = await logged_in(gateway)
        report = await finished(http, 1)
        assert {r["status"] for r in report["sirens"]} == {"sounded"}, report["sirens"]
        for siren_id in sirens:
            assert len(await onsets(simulated.control, siren_id, sequence_of(1))) == 1
        await http.aclose()
    finally:
        gateway.stop()


@pytest.mark.parametrize("restart", ["within_allowance", "past_allowance"])
async def test_a_crash_as_a_scheduled_step_is_recorded_still_sounds_it_once(
        start_district: StartDistrict, restart: str) -> None:
    """Killed just after the step is on disk, before any command left. Restarted within the
    late-start allowance, every siren sounds, once. Restarted past it, none is sent the
    command late and each is reported failed, as its own read-back shows it never got it.

    The allowance is wide (30 s) in the first case: a clean-clone CI run restarted the
    gateway more than 6 s after the crash, past the default 3 s, and the truthful answer
    was then "failed", which is the second case's subject, not the first's."""
    from tests.test_schedule_e2e import plan_at

    grace_s = 30.0 if restart == "within_allowance" else 1.0
    site = with_users(generate_site(4, poll_interval_s=0.5, timeout_s=0.5),
                      sync_lead_s=2.0, confirm_timeout_s=8.0, duplicate_window_s=0,
                      delivery_grace_s=grace_s)
    start = math.ceil(time.time()) + 12
    site["schedules"] = [plan_at(start, [0])]
    simulated = start_district(site)
    gateway = GatewayProcess(simulated.site_file, failpoints="activation.recorded")
    gateway.start()
    try:
        http = await logged_in(gateway)
        await asyncio.sleep(max(0.0, start - time.time() - 2.0))  # the step is made at -3 s
        assert gateway.process is not None and gateway.process.wait(10) == 70
        await http.aclose()
        if restart == "past_allowance":
            await asyncio.sleep(max(0.0, start + grace_s + 1.0 - time.time()))
        gateway.start(failpoints="")
        http = await logged_in(gateway)

        async def done() -> bool:
            rows = (await http.get("/api/schedules/e2e/occurrences")).json()
            return bool(rows) and rows[0]["state"] == "done"

        await wait_until(done, 40, "occurrence done")
        occurrence = (await http.get("/api/schedules/e2e/occurrences")).json()[0]
        report = (await http.get(f"/api/reports/{occurrence['id']}")).json()
        if restart == "within_allowance":
            assert report["complete"] is True, (report["warnings"], report["sirens"])
            assert report["counts"]["sounded"] == 4
            expected_onsets = 1
        else:
            assert {s["result"] for s in report["sirens"]} == {"failed"}, report["sirens"]
            assert all("late-start allowance" in s["steps"][0]["reason"]
                       for s in report["sirens"]), report["sirens"]
            expected_onsets = 0
        for siren in site["sirens"]:
            assert len(await onsets(simulated.control, siren["id"])) == expected_onsets, \
                siren["id"]
        await http.aclose()
    finally:
        gateway.stop()


async def _all_online(http: httpx.AsyncClient, count: int) -> bool:
    response = await http.get("/api/sirens")
    return response.status_code == 200 and sum(s["online"] for s in response.json()) == count


async def test_a_webhook_retried_when_the_gateway_is_killed_is_delivered_after_restart(
        start_district: StartDistrict) -> None:
    from tests.test_alerts import Receiver

    receiver = Receiver(failures=1000)  # down until told otherwise
    await receiver.start()
    site = with_users(generate_site(2, poll_interval_s=0.5, timeout_s=0.5))
    site["alerts"] = {"webhooks": [{"url": f"{receiver.url}/hook?token=secret",
                                    "min_severity": "minor", "retry_initial_s": 0.3,
                                    "max_attempts": 50}]}
    simulated = start_district(site)
    gateway = GatewayProcess(simulated.site_file)
    gateway.start()
    try:
        http = await logged_in(gateway)
        await simulated.control.inject("s00001", "mains_loss")
        await wait_until(lambda: len(receiver.posts) >= 2, 20, "retries under way")
        gateway.kill()
        await http.aclose()
        receiver.failures = 0
        tried = len(receiver.posts)
        gateway.start()
        http = await logged_in(gateway)
        await wait_until(lambda: any(s == 200 for _, s, _ in receiver.posts[tried:]), 20,
                         "delivered after the restart")
        ids = {body["notification_id"] for _, _, body in receiver.posts}
        assert len(ids) == 1  # the same notification, retried across the restart
        delivered = [body for _, status, body in receiver.posts if status == 200]
        assert len(delivered) == 1 and delivered[0]["alert"]["rule"] == "mains_lost"
        await http.aclose()
    finally:
        gateway.stop()
        await receiver.stop()


async def test_a_broker_restart_between_acceptance_and_onset_still_proves_the_sounding(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    """The device's "sounding" report is lost with the broker; its later reports still prove
    it (found by bench/truth_chaos.py)."""
    site = with_users(mixed_site(broker, modbus=0, mqtt=3, interval_s=2.0, ack_timeout_s=1.5),
                      **(FAST | {"sync_lead_s": 2.0, "confirm_timeout_s": 12.0}))
    simulated, gateway, api = await with_api(start_district, gateways, site)
    created = await sound(api, ["s00001", "s00002", "s00003"], klass="emergency",
                          signal_id="growl_test")
    activation = gateway.activations.activations[created["id"]]
    await wait_until(lambda: activation.all_accepted_at is not None, 5, "all accepted")
    broker.stop()
    await asyncio.sleep(2.5)  # the onsets happen while the broker is away
    broker.start()
    report = await api.finished(created["id"], timeout_s=30)
    for result in report["sirens"]:
        assert result["status"] == "sounded", result
        assert len(await onsets(simulated.control, result["siren_id"])) == 1


class _NotOwnedModbusLink:
    """A Modbus siren another cluster node polls: seen here only through mirrored statuses."""

    polled = True
    sequence_readback = True
    idempotent_resend = False
    timeout_s = 0.2

    def __init__(self, siren_id: str) -> None:
        self.siren_id = siren_id
        self.sent: list[Any] = []

    def progress(self, command_id: str) -> str | None:
        return None

    async def poll(self) -> Any:
        raise AssertionError("another node owns it: never polled here")

    async def send(self, command: Any) -> None:
        self.sent.append(command)


async def test_a_new_leader_never_resends_on_a_status_older_than_its_resume(
        tmp_path: Path) -> None:
    """A cluster's new leader resuming a step holds its predecessor's mirrored statuses. One
    from before the predecessor's command shows the previous sequence: it must not count as
    "not taken" (that sent the command twice, and three sirens sounded twice, in a clean-clone
    run of test_cluster.py). With no status newer than the resume, the siren is watched and
    the command is never sent blind."""
    from datetime import UTC, datetime

    from simulators.sitegen import write_site
    from siren_gateway.activation.model import Activation, SirenResult
    from siren_gateway.config.loading import load_site
    from siren_gateway.links.status import StatusReader
    from siren_gateway.model import SEQUENCE_POINT, Sample

    site = load_site(write_site(generate_site(1), tmp_path / "s.yaml", database=tmp_path / "d.db"))
    gateway = Gateway(site)  # not started: only the engine's delivery is exercised
    siren = site.config.sirens[0].id
    engine = gateway.activations
    engine.status = StatusReader(gateway.fleet, gateway.poller, owns=lambda _: False)
    now = time.time()
    activation = Activation(7, now - 5, "schedule", "test", "sound", "growl_test", now - 1,
                            [siren], {})
    result = activation.results[siren] = SirenResult(siren, activation_id=7, klass="test")
    gateway.fleet.record_sample(Sample(siren, datetime.fromtimestamp(now - 3, UTC),
                                       {SEQUENCE_POINT: sequence_of(6), "state": "idle"}))
    link = _NotOwnedModbusLink(siren)
    assert await engine._deliver(activation, result, link, resumed=True)
    assert link.sent == []
    assert "never sent blind" in result.reason


class _ReplyLostModbusLink(_NotOwnedModbusLink):
    """Another node's Modbus siren whose owner carried the command out and lost the reply;
    meanwhile the mirror shows the owner's poll that was on the wire before the command."""

    def __init__(self, siren_id: str, mirror: Callable[[], None]) -> None:
        super().__init__(siren_id)
        self.mirror = mirror

    async def send(self, command: Any) -> None:
        from siren_gateway.model import LinkError

        self.sent.append(command)
        self.mirror()
        raise LinkError("timeout", "owner node a did not answer")


async def test_a_read_back_of_another_nodes_siren_asks_its_owner_not_the_mirror(
        tmp_path: Path) -> None:
    """A reply lost on the way back from another node's siren is read back by asking the
    owner for a poll started after the command. The mirrored status, newer than the send but
    from a poll that was on the wire before the command reached the siren, shows the previous
    sequence: read as "not taken" it would send the command a second time."""
    from datetime import UTC, datetime

    from simulators.sitegen import write_site
    from siren_gateway.activation.model import Activation, SirenResult, Status
    from siren_gateway.config.loading import load_site
    from siren_gateway.links.base import SirenLink
    from siren_gateway.links.status import StatusReader
    from siren_gateway.model import SEQUENCE_POINT, Sample

    site = load_site(write_site(generate_site(1), tmp_path / "s.yaml", database=tmp_path / "d.db"))
    gateway = Gateway(site)  # not started: only the engine's delivery is exercised
    siren = site.config.sirens[0].id
    engine = gateway.activations
    asked: list[str] = []

    async def owner_polls_now(link: SirenLink) -> Sample:
        asked.append(link.siren_id)
        return Sample(link.siren_id, datetime.now(UTC),
                      {SEQUENCE_POINT: sequence_of(8), "state": "start_pending"})

    engine.status = StatusReader(gateway.fleet, gateway.poller, owns=lambda _: False,
                                 ask_owner=owner_polls_now)
    now = time.time()
    activation = Activation(8, now - 1, "operator", "test", "sound", "growl_test", now,
                            [siren], {})
    result = activation.results[siren] = SirenResult(siren, activation_id=8, klass="test")

    def mirror_the_poll_before_the_command() -> None:
        gateway.fleet.record_sample(Sample(siren, datetime.now(UTC),
                                           {SEQUENCE_POINT: sequence_of(7), "state": "idle"}))

    link = _ReplyLostModbusLink(siren, mirror_the_poll_before_the_command)
    assert await engine._deliver(activation, result, link)
    assert len(link.sent) == 1 and asked == [siren]
    assert result.status is Status.ACCEPTED

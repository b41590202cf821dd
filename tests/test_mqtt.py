"""MQTT-connected controllers against a real mosquitto: telemetry, commands, outages, bad input."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from simulators.sitegen import generate_site, write_site
from siren_gateway.activation.model import ActivationRequest, Targets
from siren_gateway.config.loading import load_profiles, load_site
from siren_gateway.config.site import Site
from siren_gateway.data import DEFAULT_PROFILES_DIR
from siren_gateway.gateway import Gateway
from siren_gateway.links.mqtt import MqttSirenLink
from siren_gateway.live.bus import StatusChanged
from siren_gateway.live.fleet import Reachability
from siren_gateway.model import Command, CommandKind, LinkError, Sample
from siren_gateway.profiles.mqtt import MqttProfile, PayloadError
from siren_gateway.security.auth import Principal, Role
from tests.conftest import Mosquitto, SimulatedDistrict, StartDistrict, wait_until

StartGateway = Callable[[Site], Awaitable[Gateway]]
OPERATOR = Principal("operator", Role.OPERATOR)
PREFIX = "test/sirens"


def mqtt_profile() -> MqttProfile:
    profile = load_profiles(DEFAULT_PROFILES_DIR)["generic_mqtt_siren"]
    assert isinstance(profile, MqttProfile)
    return profile


def mixed_site(broker: Mosquitto, modbus: int = 2, mqtt: int = 3,
               interval_s: float = 1.0, **mqtt_options: Any) -> dict[str, Any]:
    site = generate_site(modbus + mqtt, poll_interval_s=1.0, timeout_s=0.5, mqtt_sirens=mqtt,
                         telemetry_interval_s=interval_s,
                         mqtt_broker={"host": "127.0.0.1", "port": broker.port,
                                      "topic_prefix": PREFIX, "reconnect_max_s": 1.0,
                                      **mqtt_options})
    site["activation"] = {"sync_lead_s": 1.0, "confirm_timeout_s": 6.0, "delivery_grace_s": 2.0,
                          "duplicate_window_s": 0}
    return site


async def started(start_district: StartDistrict, gateways: StartGateway, site: dict[str, Any]
                  ) -> tuple[SimulatedDistrict, Gateway]:
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    total = len(site["sirens"])
    await wait_until(lambda: gateway.fleet.counts()["online"] == total, 15, "all online")
    return simulated, gateway


def mqtt_link(gateway: Gateway, siren_id: str) -> MqttSirenLink:
    link = gateway.links[siren_id]
    assert isinstance(link, MqttSirenLink)
    return link


# -- the profile, at the edge ------------------------------------------------------------------

def telemetry(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ts": time.time(), "state": "idle", "signal": "none",
                            "power": {"mains": True, "dc_ok": True, "battery_v": 27.1},
                            "audio": {"current_a": 0.0}, "modem": {"rssi_dbm": -70}}
    body.update(overrides)
    return body


def test_profile_decodes_nested_fields_and_faults() -> None:
    profile = mqtt_profile()
    values, faults, device_time = profile.decode_telemetry(
        telemetry(power={"mains": False, "dc_ok": True, "battery_v": 25.5}))
    assert values["battery_voltage"] == 25.5 and values["link_quality"] == -70
    assert values["mains_present"] is False and values["state"] == "idle"
    assert faults == profile.faults(values) == {"mains_lost"}
    assert abs(device_time.timestamp() - time.time()) < 5


@pytest.mark.parametrize(("payload", "reason"), [
    (b"x" * 9000, "oversized"),
    (b'{"ts": 1, "state": ', "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (json.dumps(telemetry(state="exploding")).encode(), "wrong_type"),
    (json.dumps(telemetry(power={"battery_v": "27"})).encode(), "wrong_type"),
    (json.dumps(telemetry(power={"mains": 1})).encode(), "wrong_type"),
    (json.dumps(telemetry(modem={"rssi_dbm": 1.5})).encode(), "wrong_type"),
    (json.dumps(telemetry(ts="yesterday")).encode(), "wrong_type"),
    (json.dumps({k: v for k, v in telemetry().items() if k != "state"}).encode(), "missing_field"),
    (json.dumps({k: v for k, v in telemetry().items() if k != "ts"}).encode(), "missing_field"),
])
def test_profile_refuses_bad_telemetry(payload: bytes, reason: str) -> None:
    profile = mqtt_profile()
    with pytest.raises(PayloadError) as caught:
        profile.decode_telemetry(profile.parse_object(payload))
    assert caught.value.reason == reason


def test_commands_round_trip_through_the_profile() -> None:
    profile = mqtt_profile()
    command = Command(CommandKind.SOUND, signal="air_raid", sequence=7)
    payload = profile.encode_command(command, 1000.0, 1035.0)
    decoded, expires = profile.decode_command(payload)
    assert decoded == command and expires == 1035.0
    assert decoded.command_id == command.command_id
    with pytest.raises(PayloadError):
        profile.decode_ack(b'{"id": "abc", "status": "maybe"}')


# -- against a real broker ----------------------------------------------------------------------

async def test_telemetry_reaches_live_state_and_store(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated, gateway = await started(start_district, gateways, mixed_site(broker))
    await simulated.control.set_battery("s00004", 24.4)
    await simulated.control.inject("s00004", "door_open")

    def reported() -> bool:
        state = gateway.fleet.states["s00004"]
        return (state.sample is not None and state.sample.values["battery_voltage"] == 24.4
                and "door_open" in state.faults)

    await wait_until(reported, 5, "battery and door reported")
    truth = await simulated.control.truth("s00004")
    state = gateway.fleet.states["s00004"]
    assert state.sample is not None
    assert state.sample.values["state"] == truth["values"]["state"]
    assert state.reachability is Reachability.ONLINE
    # Modbus and MQTT sirens in one picture
    assert {s.reachability for s in gateway.fleet.states.values()} == {Reachability.ONLINE}
    # ... and in the store (a discrete change, the door, is always stored)

    async def stored() -> bool:
        history = await gateway.telemetry.history("s00004", datetime_ago(60), 1000)
        return any(row["values"].get("battery_voltage") == 24.4 and "door_open" in row["faults"]
                   for row in history)

    await wait_until(stored, 5, "stored")
    health = gateway.health()["mqtt"]
    assert health["connected"] and health["telemetry"] > 0


def datetime_ago(seconds: float) -> Any:
    from datetime import UTC, datetime, timedelta
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def test_commands_are_acknowledged_and_carried_out(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated, gateway = await started(start_district, gateways, mixed_site(broker))
    activation = await gateway.activations.activate(OPERATOR, ActivationRequest(
        Targets(all=True), "test", signal="growl_test"))
    await wait_until(lambda: activation.state != "running", 20, "activation done")
    statuses = {sid: r.status.value for sid, r in activation.results.items()}
    assert set(statuses.values()) == {"sounded"}, activation.report()
    for siren_id in ("s00003", "s00004", "s00005"):
        truth = await simulated.control.truth(siren_id)
        assert [o["signal"] for o in truth["onsets"]] == ["growl_test"]
    # A refusal is reported as such: a silent test while a signal plays is refused.
    link = mqtt_link(gateway, "s00003")
    await link.send(Command(CommandKind.SOUND, signal="air_raid", sequence=11))
    with pytest.raises(LinkError) as refused:
        await link.send(Command(CommandKind.SILENT_TEST, sequence=12))
    assert refused.value.reason == "rejected"
    await link.send(Command(CommandKind.STOP, sequence=13))
    assert (await simulated.control.truth("s00003"))["state"] == "idle"


async def test_ack_faults_duplicate_late_and_missing(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated, gateway = await started(start_district, gateways,
                                       mixed_site(broker, modbus=0, mqtt=3, ack_timeout_s=1.5))
    control = simulated.control
    stats = gateway.mqtt.stats if gateway.mqtt else None
    assert stats is not None
    await control.inject("s00001", "duplicate_acks")
    await mqtt_link(gateway, "s00001").send(Command(CommandKind.ARM, sequence=0))
    await wait_until(lambda: stats.rejected_by_reason.get("duplicate_ack", 0) >= 1, 3, "dup")

    await control.inject("s00002", "late_acks", delay_s=2.5)
    with pytest.raises(LinkError) as late:
        await mqtt_link(gateway, "s00002").send(Command(CommandKind.RESET_FAULTS, sequence=0))
    assert late.value.reason == "unacknowledged"
    await wait_until(lambda: stats.rejected_by_reason.get("late_ack", 0) >= 1, 4, "late ack")

    await control.inject("s00003", "never_ack")
    with pytest.raises(LinkError) as missing:
        await mqtt_link(gateway, "s00003").send(Command(CommandKind.RESET_FAULTS, sequence=0))
    assert missing.value.reason == "unacknowledged"
    assert (await control.truth("s00003"))["commands_received"] == 1  # it did arrive
    # With a sequence number, the device's own report proves it took the command.
    await mqtt_link(gateway, "s00003").send(Command(CommandKind.DISARM, sequence=21))
    assert stats.acks_inferred_from_telemetry == 1
    assert stats.commands_unacknowledged == 2


async def test_silent_disconnect_goes_stale_then_offline_and_will_goes_offline_at_once(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    # Reports every 1 s: stale after 2.5 s of silence, offline after 4 s. The stale phase is
    # longer than the 1 s sweep, so a sweep always lands in it; the test reads the changes
    # from the bus (every one, in order) rather than sampling the state and hoping.
    simulated, gateway = await started(start_district, gateways,
                                       mixed_site(broker, modbus=1, mqtt=2, interval_s=1.0))
    fleet = gateway.fleet
    transitions = gateway.bus.subscribe("test: s00002", kinds=(StatusChanged,))
    await simulated.control.inject("s00002", "silent_disconnect")  # no will: retained "online"
    await wait_until(lambda: fleet.states["s00002"].reachability is Reachability.OFFLINE, 10,
                     "silent siren offline")
    seen = ["online"]
    while not transitions.queue.empty():
        event = transitions.queue.get_nowait()
        if isinstance(event, StatusChanged) and event.siren_id == "s00002":
            seen.append(event.new)
    transitions.close()
    assert seen == ["online", "stale", "offline"]
    assert mqtt_link(gateway, "s00002").device_state == "online"  # the broker never said

    changes = gateway.bus.subscribe("test", kinds=(StatusChanged,))
    await simulated.control.inject("s00003", "vanish")  # the broker publishes the last will
    await wait_until(lambda: fleet.states["s00003"].reachability is Reachability.OFFLINE, 3,
                     "will delivered")
    assert mqtt_link(gateway, "s00003").device_state == "offline"
    # Offline because the device's will said so, not because silence ran out.
    reasons = []
    while not changes.queue.empty():
        event = changes.queue.get_nowait()
        if isinstance(event, StatusChanged) and event.siren_id == "s00003":
            reasons.append((event.new, event.reason))
    assert reasons[0] == ("offline", "device reported offline (or its last will)"), reasons
    assert fleet.states["s00001"].reachability is Reachability.ONLINE
    # Back again: online as soon as it reports.
    await simulated.control.inject("s00002", "silent_disconnect", active=False)
    await wait_until(lambda: fleet.states["s00002"].reachability is Reachability.ONLINE, 5,
                     "back online")


async def test_every_class_of_bad_input_is_counted_while_others_flow(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated, gateway = await started(start_district, gateways,
                                       mixed_site(broker, modbus=0, mqtt=3, interval_s=0.5))
    hub = gateway.mqtt
    assert hub is not None
    await simulated.control.inject("s00001", "malformed_json")
    now = time.time()
    bad: list[tuple[str, bytes]] = [
        (f"{PREFIX}/s00002/telemetry", b"y" * 9000),
        (f"{PREFIX}/s00002/telemetry", b"[]"),
        (f"{PREFIX}/s00002/telemetry", json.dumps(telemetry(state=5)).encode()),
        (f"{PREFIX}/s00002/telemetry", json.dumps(telemetry(ts=now - 3600)).encode()),
        (f"{PREFIX}/s00002/telemetry", json.dumps(telemetry(ts=now + 3600)).encode()),
        (f"{PREFIX}/s00002/telemetry", json.dumps(telemetry(ts=now - 100)).encode()),
        (f"{PREFIX}/nobody/telemetry", json.dumps(telemetry()).encode()),
        (f"{PREFIX}/s00002/state", b"maybe"),
        (f"{PREFIX}/s00002/ack", b'{"id": 5}'),
        (f"{PREFIX}/s00002/ack", b'{"id": "never-sent", "status": "accepted"}'),
    ]
    flowing_before = gateway.fleet.states["s00003"].polls_ok
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for topic, payload in bad:
            await client.publish(topic, payload, qos=1)
    expected = {"oversized", "not_an_object", "wrong_type", "stale_timestamp",
                "future_timestamp", "out_of_order", "unknown_siren", "bad_state", "bad_ack",
                "unknown_command", "malformed_json"}
    await wait_until(lambda: expected <= set(hub.stats.rejected_by_reason), 5,
                     f"all counted: {hub.stats.rejected_by_reason}")
    # Nobody else was held up, and the bad messages changed nothing.
    await wait_until(lambda: gateway.fleet.states["s00003"].polls_ok >= flowing_before + 3, 5,
                     "s00003 flowing")
    state = gateway.fleet.states["s00002"]
    assert state.reachability is Reachability.ONLINE
    assert state.sample is not None and state.sample.values["state"] == "idle"
    await wait_until(lambda: gateway.fleet.states["s00001"].reachability is not Reachability.ONLINE,
                     5, "malformed-only siren is not online")


async def test_broker_restart_reconnects_and_commands_are_never_unknown(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    site = mixed_site(broker, modbus=1, mqtt=2, interval_s=0.5, ack_timeout_s=1.0)
    # Room for the device, too, to reconnect and subscribe again before the delivery deadline:
    # a command published while it is still away is not queued for it (clean sessions).
    site["activation"] |= {"delivery_grace_s": 10.0, "confirm_timeout_s": 16.0}
    simulated, gateway = await started(start_district, gateways, site)
    hub = gateway.mqtt
    assert hub is not None
    broker.stop()
    await wait_until(lambda: not hub.stats.connected, 5, "gateway saw the outage")
    # A command issued during the outage, with the broker back within its deadline.
    activation = await gateway.activations.activate(OPERATOR, ActivationRequest(
        Targets(sirens=("s00002",)), "test", signal="growl_test"))
    await asyncio.sleep(1.0)
    broker.start()
    await wait_until(lambda: activation.state != "running", 30, "activation done")
    result = activation.results["s00002"]
    assert result.status.value == "sounded", result
    assert [o["signal"] for o in (await simulated.control.truth("s00002"))["onsets"]] == [
        "growl_test"]
    assert hub.stats.connects >= 2
    # Telemetry flows again by itself.
    before = gateway.fleet.states["s00003"].polls_ok
    await wait_until(lambda: gateway.fleet.states["s00003"].polls_ok > before + 2, 10, "resumed")

    # A broker that stays away: the command is reported failed (never delivered), not unknown.
    broker.stop()
    await wait_until(lambda: not hub.stats.connected, 5, "outage again")
    activation = await gateway.activations.activate(OPERATOR, ActivationRequest(
        Targets(sirens=("s00003",)), "test", signal="growl_test"))
    await wait_until(lambda: activation.state != "running", 30, "second activation done")
    result = activation.results["s00003"]
    assert result.status.value == "failed", result
    assert "never delivered" in result.reason
    assert (await simulated.control.truth("s00003"))["commands_received"] == 0
    broker.start()


def test_partial_reports_carry_points_with_the_time_they_were_reported(tmp_path: Path) -> None:
    """A point left out of two partial reports in a row keeps its value and the time of the
    report that last had it; a complete report carries nothing; a fault clears only when
    reported clear. (The link keeps the last report by reference, not a copy.)"""
    site = generate_site(1, mqtt_sirens=1, mqtt_broker={"host": "127.0.0.1", "port": 1,
                                                        "topic_prefix": PREFIX})
    gateway = Gateway(load_site(write_site(site, tmp_path / "site.yaml",
                                           database=tmp_path / "g.db")))
    assert gateway.mqtt is not None
    link = gateway.mqtt.links["s00001"]
    now = time.time()

    def report(offset: float, **body: Any) -> Sample:
        payload = json.dumps(telemetry(ts=now + offset, **body)).encode()
        return link.on_telemetry(payload, now + offset)

    first = report(0.0, security={"door_open": True})
    assert "door_open" in first.faults and not first.carried
    # the power section without mains and dc_ok; the second reports the door again
    second = report(1.0, power={"battery_v": 26.0}, security={"door_open": True})
    third = report(2.0, power={"battery_v": 25.0})  # no security section either
    for sample in (second, third):
        assert sample.values["mains_present"] is True and sample.values["dc_ok"] is True
        assert sample.carried["mains_present"] == first.received_at.timestamp()
        assert "battery_voltage" not in sample.carried
    assert "cabinet_door_open" not in second.carried
    assert third.values["cabinet_door_open"] is True and "door_open" in third.faults
    assert third.carried["cabinet_door_open"] == second.received_at.timestamp()
    assert first.values["battery_voltage"] == 27.1  # earlier samples are never changed
    fourth = report(3.0, security={"door_open": False})
    assert "door_open" not in fourth.faults and not fourth.carried  # complete again


async def test_a_command_to_many_mqtt_sirens_at_once_logs_no_warning_per_publish(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway,
        caplog: pytest.LogCaptureFixture) -> None:
    """A zone's command puts one QoS 1 publish per siren in flight at once, as expected;
    aiomqtt logged a warning for each one beyond 10 (1,269 lines in a soak's first minutes)."""
    simulated, gateway = await started(start_district, gateways,
                                       mixed_site(broker, modbus=0, mqtt=30, interval_s=2.0))
    sirens = sorted(gateway.fleet.states)
    with caplog.at_level("WARNING", logger="siren_gateway.links.mqtt.client"):
        await asyncio.gather(*(mqtt_link(gateway, siren).send(
            Command(CommandKind.ARM, sequence=0)) for siren in sirens))
    assert not [r for r in caplog.records if "pending publish" in r.getMessage()]
    for siren in sirens:
        assert (await simulated.control.truth(siren))["commands_received"] == 1

"""Alerts driven by fault injection in the simulators over real sockets, with real notifiers:
a mosquitto broker of our own and a local HTTP receiver for webhooks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from simulators.sitegen import free_ports, generate_site
from siren_gateway.config.site import Site
from siren_gateway.gateway import Gateway
from tests.conftest import (
    LocalHttpServer,
    Mosquitto,
    SimulatedDistrict,
    StartDistrict,
    wait_until,
    with_users,
)
from tests.test_activation import Api

StartGateway = Callable[[Site], Awaitable[Gateway]]


def alert_site(**alerts: Any) -> dict[str, Any]:
    site = with_users(generate_site(4, poll_interval_s=0.25, timeout_s=0.3),
                      confirm_timeout_s=4.0, sync_lead_s=1.0, confirm_poll_interval_s=0.25,
                      duplicate_window_s=1.0)
    site["sirens"][3]["inhibited"] = True
    site["alerts"] = {"clear_after_s": 1.0, "offline_after_s": 2.0,
                      "thresholds": {"battery_low": {"point": "battery_voltage", "below": 23.0,
                                                     "clear_at": 23.6, "for_s": 1.0},
                                     "cabinet_temperature_high": {
                                         "point": "cabinet_temperature", "above": 55.0,
                                         "clear_at": 50.0, "for_s": 0.5, "severity": "minor"}},
                      } | alerts
    return site


def alerts_of(gateway: Gateway, rule: str, siren: str | None = None) -> list[dict[str, Any]]:
    return [a for a in gateway.alerts.query() if a["rule"] == rule
            and (siren is None or a["siren_id"] == siren)]


def active(gateway: Gateway, rule: str, siren: str) -> bool:
    return any(a["state"] != "cleared" for a in alerts_of(gateway, rule, siren))


@pytest.fixture
async def district(start_district: StartDistrict, gateways: StartGateway
                   ) -> AsyncIterator[tuple[SimulatedDistrict, Gateway]]:
    simulated = start_district(alert_site())
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "all online")
    yield simulated, gateway


@pytest.mark.parametrize(("fault", "options", "rule", "latched"), [
    ("mains_loss", {}, "mains_lost", False),
    ("door_open", {}, "door_open", False),
    ("battery_box_open", {}, "battery_box_open", False),
    ("overheat", {}, "overheat", False),
    ("overheat", {}, "cabinet_temperature_high", False),  # the threshold rule on 75 °C
    ("driver_fault", {}, "driver_fault", True),
    ("sabotage", {}, "sabotage", True),
    ("local_activation", {"signal": "growl_test"}, "local_activation", True),
])
async def test_a_fault_raises_once_and_clears(
        district: tuple[SimulatedDistrict, Gateway], fault: str, options: dict[str, Any],
        rule: str, latched: bool) -> None:
    simulated, gateway = district
    await simulated.control.inject("s00001", fault, **options)
    await wait_until(lambda: active(gateway, rule, "s00001"), 3, f"{rule} raised")
    await asyncio.sleep(1.0)  # many more polls with the fault: still one alert
    assert len(alerts_of(gateway, rule, "s00001")) == 1
    await simulated.control.inject("s00001", fault, active=False)
    if latched:  # the controller holds it until told: still active, then reset
        await asyncio.sleep(1.5)
        assert active(gateway, rule, "s00001")
        from siren_gateway.model import Command, CommandKind

        await gateway.links["s00001"].send(Command(CommandKind.RESET_FAULTS))
    await wait_until(lambda: not active(gateway, rule, "s00001"), 4, f"{rule} cleared")
    history = [h["event"] for h in alerts_of(gateway, rule, "s00001")[0]["history"]]
    assert history == ["raised", "cleared"]
    assert not alerts_of(gateway, rule, "s00002")


async def test_latched_amplifier_fault_clears_only_after_reset(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    simulated, gateway = district
    await simulated.control.inject("s00002", "amplifier_fault", amplifier=2)
    await wait_until(lambda: active(gateway, "amplifier_fault", "s00002"), 3, "raised")
    assert alerts_of(gateway, "amplifier_fault")[0]["severity"] == "critical"
    await simulated.control.inject("s00002", "amplifier_fault", active=False, amplifier=2)
    await asyncio.sleep(2.0)
    assert active(gateway, "amplifier_fault", "s00002")  # latched in the controller
    from siren_gateway.model import Command, CommandKind

    await gateway.links["s00002"].send(Command(CommandKind.RESET_FAULTS))
    await wait_until(lambda: not active(gateway, "amplifier_fault", "s00002"), 4, "cleared")


async def test_battery_threshold_has_a_minimum_duration_and_hysteresis(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    simulated, gateway = district
    await simulated.control.set_battery("s00001", 22.5)
    await asyncio.sleep(0.6)  # shorter than for_s = 1 s: nothing yet
    await simulated.control.set_battery("s00001", 24.0)
    await asyncio.sleep(1.5)
    assert not alerts_of(gateway, "battery_low")
    await simulated.control.set_battery("s00001", 22.5)
    took = await wait_until(lambda: active(gateway, "battery_low", "s00001"), 4, "raised")
    assert took >= 0.9
    await simulated.control.set_battery("s00001", 23.3)  # above the limit, below clear_at
    await asyncio.sleep(2.0)
    assert active(gateway, "battery_low", "s00001")
    await simulated.control.set_battery("s00001", 25.0)
    await wait_until(lambda: not active(gateway, "battery_low", "s00001"), 4, "cleared")
    assert len(alerts_of(gateway, "battery_low")) == 1


async def test_flapping_does_not_make_a_storm(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    simulated, gateway = district
    for _ in range(6):  # the door bangs open and shut every 0.3 s (shorter than clear_after)
        await simulated.control.inject("s00001", "door_open")
        await asyncio.sleep(0.3)
        await simulated.control.inject("s00001", "door_open", active=False)
        await asyncio.sleep(0.3)
    await wait_until(lambda: not active(gateway, "door_open", "s00001"), 4, "cleared")
    assert len(alerts_of(gateway, "door_open", "s00001")) == 1


async def test_offline_and_clock_skew_and_the_inhibited_siren(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    simulated, gateway = district
    await simulated.control.inject("s00003", "no_response")
    await simulated.control.set_clock("s00002", offset_s=60)
    await simulated.control.inject("s00004", "mains_loss")  # inhibited: raises nothing
    await simulated.control.inject("s00004", "no_response")
    await wait_until(lambda: active(gateway, "offline", "s00003"), 6, "offline raised")
    await wait_until(lambda: active(gateway, "clock_skew", "s00002"), 3, "skew raised")
    assert not [a for a in gateway.alerts.query() if a["siren_id"] == "s00004"]
    await simulated.control.inject("s00003", "no_response", active=False)
    await wait_until(lambda: not active(gateway, "offline", "s00003"), 10, "offline cleared")
    await simulated.control.set_clock("s00002", offset_s=0)
    await wait_until(lambda: not active(gateway, "clock_skew", "s00002"), 4, "skew cleared")


async def test_zone_and_siren_overrides(start_district: StartDistrict,
                                        gateways: StartGateway) -> None:
    site = alert_site(overrides=[
        {"rule": "battery_low", "zone": "zone-2", "below": 25.0, "clear_at": 25.5,
         "severity": "critical"},
        {"rule": "door_open", "siren": "s00001", "enabled": False},
        {"rule": "door_open", "zone": "zone-3", "severity": "major"}])
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    for siren in ("s00001", "s00002"):  # zone-1 and zone-2
        await simulated.control.set_battery(siren, 24.5)
        await simulated.control.inject(siren, "door_open")
    await simulated.control.inject("s00003", "door_open")  # zone-3
    await wait_until(lambda: active(gateway, "battery_low", "s00002"), 4, "zone limit applies")
    await wait_until(lambda: active(gateway, "door_open", "s00003"), 3, "door in zone-3")
    await asyncio.sleep(1.5)
    assert alerts_of(gateway, "battery_low", "s00002")[0]["severity"] == "critical"
    assert not alerts_of(gateway, "battery_low", "s00001")  # 24.5 V is fine elsewhere
    assert not alerts_of(gateway, "door_open", "s00001")  # disabled for this siren
    assert alerts_of(gateway, "door_open", "s00003")[0]["severity"] == "major"
    assert alerts_of(gateway, "door_open", "s00002")[0]["severity"] == "minor"


async def test_a_telemetry_spool_overflow_raises_an_alert(start_district: StartDistrict,
                                                          gateways: StartGateway) -> None:
    site = alert_site()
    site["influx"] = {"url": f"http://127.0.0.1:{free_ports(1)[0]}",  # nobody listens
                      "spool_max_mb": 0.002, "batch_size": 4, "flush_interval_s": 0.1,
                      "retry_initial_s": 5}
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: bool(alerts_of(gateway, "telemetry_spool_overflow")), 20,
                     "overflow alert")
    alert = alerts_of(gateway, "telemetry_spool_overflow")[0]
    assert alert["siren_id"] is None and "dropped" in alert["message"]
    assert len(alerts_of(gateway, "telemetry_spool_overflow")) == 1


async def test_a_failed_test_raises_an_alert_until_the_siren_proves_itself(
        district: tuple[SimulatedDistrict, Gateway]) -> None:
    simulated, gateway = district
    api = await Api(gateway).login("operator")
    await simulated.control.inject("s00001", "all_amplifiers_fault")
    created = await api.post("/api/activations", {
        "targets": {"sirens": ["s00001"]}, "class": "test", "signal": "growl_test"})
    await api.finished(created.json()["id"])
    await wait_until(lambda: active(gateway, "activation_failed", "s00001"), 3, "raised")
    await simulated.control.inject("s00001", "all_amplifiers_fault", active=False)
    from siren_gateway.model import Command, CommandKind

    await gateway.links["s00001"].send(Command(CommandKind.RESET_FAULTS))
    await asyncio.sleep(5)  # the growl test's own sounding period must pass
    again = await api.post("/api/activations", {
        "targets": {"sirens": ["s00001"]}, "class": "test", "signal": "growl_test"})
    assert again.status_code == 201, again.text
    await api.finished(again.json()["id"])
    await wait_until(lambda: not active(gateway, "activation_failed", "s00001"), 3, "cleared")


async def test_ack_is_audited_and_alerts_survive_a_restart(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated = start_district(alert_site())
    first = await gateways(simulated.site())
    await wait_until(lambda: first.fleet.counts()["online"] == 4, 10, "online")
    await simulated.control.inject("s00001", "mains_loss")
    await wait_until(lambda: active(first, "mains_lost", "s00001"), 3, "raised")
    alert_id = alerts_of(first, "mains_lost")[0]["id"]
    api = await Api(first).login("operator")
    viewer = await Api(first).login("viewer")
    assert (await viewer.post(f"/api/alerts/{alert_id}/ack", {"comment": "x"})).status_code == 403
    acked = await api.post(f"/api/alerts/{alert_id}/ack", {"comment": "crew sent, ETA 40 min"})
    assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
    assert (await api.post(f"/api/alerts/{alert_id}/ack", {"comment": "again"})).status_code == 409
    audit = (await api.get("/api/audit", action="alert.ack")).json()
    assert audit[1]["outcome"] == "ok" and audit[1]["details"]["comment"] == "crew sent, ETA 40 min"
    listed = (await viewer.get("/api/alerts", state="acknowledged")).json()
    assert [a["id"] for a in listed] == [alert_id]
    await first.stop()
    second = await gateways(simulated.site())
    await wait_until(lambda: second.fleet.counts()["online"] == 4, 10, "online again")
    await asyncio.sleep(1.0)  # the fault still holds: the same alert, not a new one
    after = alerts_of(second, "mains_lost", "s00001")
    assert [(a["id"], a["state"]) for a in after] == [(alert_id, "acknowledged")]
    await simulated.control.inject("s00001", "mains_loss", active=False)
    await wait_until(lambda: not active(second, "mains_lost", "s00001"), 4, "cleared")


class Receiver(LocalHttpServer):
    """A local HTTP endpoint for webhooks that fails the first `failures` posts."""

    def __init__(self, failures: int) -> None:
        super().__init__("/hook", self.handle)
        self.failures = failures
        self.posts: list[tuple[float, int, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = 503 if self.failures > 0 else 200
        self.failures -= 1
        self.posts.append((time.monotonic(), status, body))
        return web.Response(status=status)


async def test_webhook_posts_with_retries_and_filters(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    receiver = Receiver(failures=2)
    await receiver.start()
    try:
        site = alert_site(webhooks=[
            {"url": f"http://127.0.0.1:{receiver.port}/hook", "min_severity": "major",
             "retry_initial_s": 0.2}])
        simulated = start_district(site)
        gateway = await gateways(simulated.site())
        await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
        await simulated.control.inject("s00002", "door_open")  # minor: filtered out
        await simulated.control.inject("s00001", "mains_loss")  # major
        await wait_until(lambda: any(s == 200 for _, s, _ in receiver.posts), 10, "delivered")
        statuses = [s for _, s, _ in receiver.posts]
        assert statuses == [503, 503, 200]  # two failures, retried, then delivered once
        body = receiver.posts[-1][2]
        assert body["change"] == "raised" and body["alert"]["rule"] == "mains_lost"
        assert receiver.posts[1][0] - receiver.posts[0][0] >= 0.15  # back-off between tries
        await asyncio.sleep(0.5)
        assert all(p[2]["alert"]["rule"] != "door_open" for p in receiver.posts)
    finally:
        await receiver.stop()


async def retained_alerts(port: int, topic: str) -> list[dict[str, Any]]:
    async with aiomqtt.Client("127.0.0.1", port=port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                result: list[dict[str, Any]] = json.loads(payload)
                return result
    return []


async def test_mqtt_topic_holds_the_active_alerts(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    mosquitto = broker.port
    site = alert_site(mqtt={"host": "127.0.0.1", "port": mosquitto, "topic": "test/alerts"})
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    await simulated.control.inject("s00001", "mains_loss")
    await wait_until(lambda: active(gateway, "mains_lost", "s00001"), 3, "raised")

    async def retained() -> list[dict[str, Any]]:
        return await retained_alerts(mosquitto, "test/alerts")

    async def shows_mains() -> bool:
        return [a["rule"] for a in await retained()] == ["mains_lost"]

    await wait_until(shows_mains, 5, "retained message with the alert", 0.2)
    await simulated.control.inject("s00001", "mains_loss", active=False)
    await wait_until(lambda: not active(gateway, "mains_lost", "s00001"), 4, "cleared")

    async def empty() -> bool:
        return await retained() == []

    await wait_until(empty, 5, "retained message without it", 0.2)


async def test_mqtt_notifier_reconnects_after_a_broker_restart(
        broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway) -> None:
    site = alert_site(mqtt={"host": "127.0.0.1", "port": broker.port, "topic": "test/alerts"})
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    await asyncio.to_thread(broker.stop)  # the broker goes away (its retained state with it)
    await simulated.control.inject("s00002", "door_open")
    await wait_until(lambda: active(gateway, "door_open", "s00002"), 3, "raised meanwhile")
    await asyncio.sleep(1.0)
    await asyncio.to_thread(broker.start)

    async def republished() -> bool:
        try:
            alerts = await retained_alerts(broker.port, "test/alerts")
        except (TimeoutError, aiomqtt.MqttError):
            return False
        return [a["rule"] for a in alerts] == ["door_open"]

    await wait_until(republished, 20, "the notifier reconnects and republishes", 0.5)
    assert gateway.mqtt_alerts is not None and gateway.mqtt_alerts.connect_failures >= 1


async def test_raise_latency_on_the_websocket(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    """From a fault injected in the simulator to the alert on the websocket, over real sockets."""
    import uvicorn
    import websockets
    import websockets.exceptions
    from websockets.typing import Subprotocol

    from siren_gateway.api.app import create_app
    from siren_gateway.security.auth import Principal, Role

    interval = 1.0
    site = alert_site()
    for siren in site["sirens"]:
        siren["poll_interval_s"] = interval
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    token = gateway.tokens.issue(Principal("viewer", Role.VIEWER)).token
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(gateway, manage_lifecycle=False),
                                           host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started, 10, "API listening")
        with pytest.raises(websockets.exceptions.InvalidStatus):  # no token: HTTP 403
            async with websockets.connect(f"ws://127.0.0.1:{port}/api/stream") as ws:
                await ws.recv()
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/stream", subprotocols=[
                Subprotocol("siren-gateway"), Subprotocol(f"bearer.{token}")]) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            injected = time.monotonic()
            await simulated.control.inject("s00002", "mains_loss")
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if event["type"] == "AlertChanged" and event["alert"]["rule"] == "mains_lost":
                    break
            latency = time.monotonic() - injected
    finally:
        server.should_exit = True
        await serving
    print(f"raise latency, fault injected -> alert on the websocket: {latency:.3f} s "
          f"(poll interval {interval} s)")
    assert latency <= interval + 1.0


async def test_cleared_alerts_leave_memory_but_stay_on_disk(
        district: tuple[SimulatedDistrict, Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway running for months holds every active alert and only the newest cleared."""
    import siren_gateway.alerts.engine

    monkeypatch.setattr(siren_gateway.alerts.engine, "KEEP_CLEARED", 1)
    simulated, gateway = district
    sirens = ["s00001", "s00002", "s00003"]
    for siren in sirens:
        await simulated.control.inject(siren, "door_open")
    await wait_until(lambda: all(active(gateway, "door_open", s) for s in sirens), 4, "raised")
    for siren in sirens:
        await simulated.control.inject(siren, "door_open", active=False)
    await wait_until(lambda: not any(active(gateway, "door_open", s) for s in sirens), 5,
                     "cleared")

    def stored(conn: Any) -> list[str]:
        return [row[0] for row in conn.execute("SELECT state FROM alerts WHERE data LIKE "
                                               "'%door_open%'")]

    await wait_until(lambda: len(alerts_of(gateway, "door_open")) == 1, 5, "pruned to one")
    assert await gateway.db.run(stored) == ["cleared"] * 3

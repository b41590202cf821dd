"""The engines measure time on one injectable clock: reachability and the offline alert are
tested here by moving time, not by waiting for it (no sleeps, no sampling)."""

from __future__ import annotations

from pathlib import Path

from simulators.sitegen import generate_site, write_site
from siren_gateway.alerts.engine import AlertEngine
from siren_gateway.config.loading import load_site
from siren_gateway.live.bus import Bus, StatusChanged
from siren_gateway.live.fleet import Fleet, Reachability, SirenState
from siren_gateway.model import LinkError, Sample
from siren_gateway.runtime.clock import utc
from siren_gateway.security.audit import AuditLog
from siren_gateway.store.sqlite import SqliteStore
from tests.conftest import FakeClock, wait_until

START = 1_800_000_000.0


def _site(tmp_path: Path) -> Path:
    # s00001 polled over Modbus every 2 s; s00002 reports over MQTT every 2 s.
    site = generate_site(2, poll_interval_s=2.0, mqtt_sirens=1, telemetry_interval_s=2.0,
                         mqtt_broker={"host": "127.0.0.1", "port": 9})
    return write_site(site, tmp_path / "site.yaml", database=tmp_path / "g.db")


def reach(state: SirenState) -> Reachability:
    """Read anew each time (mypy would take one assert as true for the rest of the test)."""
    return state.reachability


def _sample(clock: FakeClock, siren_id: str) -> Sample:
    return Sample(siren_id, utc(clock), {"state": "idle"})


def test_silence_turns_stale_then_offline_exactly_when_the_clock_says(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path))
    clock = FakeClock(START)
    bus = Bus()
    changes = bus.subscribe("test", kinds=(StatusChanged,))
    fleet = Fleet(site.catalogue, site.config.polling, site.config.mqtt, bus, clock)
    mqtt_id = next(s.id for s in site.config.sirens if s.link.type == "mqtt")
    modbus_id = next(s.id for s in site.config.sirens if s.link.type != "mqtt")
    mqtt_state, modbus_state = fleet.states[mqtt_id], fleet.states[modbus_id]
    for siren_id in (mqtt_id, modbus_id):
        fleet.record_sample(_sample(clock, siren_id))
    assert {s.reachability for s in (mqtt_state, modbus_state)} == {Reachability.ONLINE}

    clock.t += mqtt_state.stale_after_s - 0.01  # just inside: nothing changes
    fleet.sweep()
    assert reach(mqtt_state) is Reachability.ONLINE
    clock.t += 0.02  # just past: both stale, at that moment
    fleet.sweep()
    assert reach(mqtt_state) is Reachability.STALE
    assert reach(modbus_state) is Reachability.STALE
    assert mqtt_state.since == utc(clock)
    assert mqtt_state.offline_after_s is not None
    clock.t = START + mqtt_state.offline_after_s + 0.01
    fleet.sweep()
    # A reporting siren goes offline by silence; a polled one only when its polls fail.
    assert reach(mqtt_state) is Reachability.OFFLINE
    assert reach(modbus_state) is Reachability.STALE
    for _ in range(3):
        fleet.record_failure(modbus_id, LinkError("timeout", "no answer"))
    assert reach(modbus_state) is Reachability.OFFLINE

    seen: dict[str, list[str]] = {mqtt_id: [], modbus_id: []}
    while not changes.queue.empty():
        event = changes.queue.get_nowait()
        assert isinstance(event, StatusChanged)
        seen[event.siren_id].append(event.new)
    # Every phase, each exactly once: nothing sampled, so nothing missed.
    assert seen == {mqtt_id: ["online", "stale", "offline"],
                    modbus_id: ["online", "stale", "offline"]}


async def test_the_offline_alert_follows_the_clock(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path))
    clock = FakeClock(START)
    bus = Bus()
    fleet = Fleet(site.catalogue, site.config.polling, site.config.mqtt, bus, clock)
    store = SqliteStore(tmp_path / "alerts.db")
    await store.start()
    audit = AuditLog(store)
    engine = AlertEngine(site.config.alerts, site.config.coverage.severity, fleet, bus, store,
                         audit)
    assert engine.clock is clock  # the fleet's clock, unless given another
    await engine.start()
    try:
        limit = engine.config.offline_after_s
        for state in fleet.states.values():
            fleet.record_sample(_sample(clock, state.config.id))

        def offline_alerts(state: str) -> set[str | None]:
            return {a.siren_id for a in engine.alerts.values()
                    if a.rule == "offline" and a.state == state}

        await clock.advance(limit - 2)
        assert not offline_alerts("active")
        siren = next(iter(fleet.states))
        for other in list(fleet.states)[1:]:
            fleet.record_sample(_sample(clock, other))  # the other keeps answering
        await clock.advance(3)
        await wait_until(lambda: offline_alerts("active") == {siren}, 5, "offline raised")
        raised = next(a for a in engine.alerts.values() if a.rule == "offline")
        assert START + limit < raised.raised_at <= START + limit + 2

        fleet.record_sample(_sample(clock, siren))  # back: cleared after clear_after_s
        await clock.advance(engine.config.clear_after_s + 2)
        await wait_until(lambda: offline_alerts("cleared") == {siren}, 5, "offline cleared")
    finally:
        await engine.stop()
        await audit.stop()
        await store.stop()

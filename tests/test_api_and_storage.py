"""The read API and the embedded telemetry store, against a simulated district."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi import FastAPI

from simulators.sitegen import assign_free_ports, free_ports, generate_site
from siren_gateway.api.app import create_app
from siren_gateway.config.site import Site
from siren_gateway.config.telemetry import StorageConfig
from siren_gateway.gateway import Gateway
from siren_gateway.live.bus import Bus, SampleReceived
from siren_gateway.model import Sample
from siren_gateway.store.sqlite import SqliteDatabase as Database
from siren_gateway.store.telemetry import TelemetryStore
from tests.conftest import PASSWORDS, StartDistrict, wait_until, with_users

REPO = Path(__file__).resolve().parent.parent
StartGateway = Callable[[Site], Awaitable[Gateway]]


def api_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def test_read_api_lists_sirens_with_state_and_history(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site_dict = with_users(generate_site(3, poll_interval_s=0.2))
    site_dict["storage"] = {"telemetry_min_interval_s": 0}
    district = start_district(site_dict)
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 3, 10, "online")
    await district.control.inject("s00002", "mains_loss")
    await wait_until(lambda: "mains_lost" in gateway.fleet.states["s00002"].faults, 3, "fault")
    await wait_until(lambda: gateway.telemetry.written >= 6, 5, "telemetry stored")
    async with api_client(create_app(gateway, manage_lifecycle=False)) as client:
        assert (await client.get("/api/sirens")).status_code == 401  # reads need a login too
        login = await client.post("/api/auth/token",
                                  data={"username": "viewer", "password": PASSWORDS["viewer"]})
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        health = (await client.get("/api/health")).json()
        assert health["status"] == "ok"
        assert health["sirens"]["online"] == 3 and health["sirens"]["with_faults"] == 1
        sirens = (await client.get("/api/sirens")).json()
        assert [s["id"] for s in sirens] == ["s00001", "s00002", "s00003"]
        second = sirens[1]
        assert second["online"] is True and second["reachability"] == "online"
        assert second["faults"] == ["mains_lost"]
        assert second["telemetry"]["mains_present"] is False
        assert set(second) >= {"id", "name", "zones", "location", "online", "state", "last_seen",
                               "telemetry", "faults"}
        detail: dict[str, Any] = {}

        async def two_stored() -> bool:  # polls land on their own phase: wait, don't count
            nonlocal detail
            detail = (await client.get("/api/sirens/s00002",
                                       params={"history_minutes": 5})).json()
            return len(detail["history"]) >= 2 and detail["history"][-1]["faults"] == [
                "mains_lost"]

        await wait_until(two_stored, 10, "two samples of s00002 stored", 0.2)
        assert detail["id"] == "s00002"
        assert len(detail["history"]) >= 2
        assert detail["history"][-1]["faults"] == ["mains_lost"]
        times = [h["time"] for h in detail["history"]]
        assert times == sorted(times)
        missing = await client.get("/api/sirens/nope")
        assert missing.status_code == 404
        assert "no siren with id 'nope'" in missing.json()["detail"]
        bad = await client.get("/api/sirens/s00001", params={"history_minutes": -1})
        assert bad.status_code == 422


def sample(siren_id: str, at: datetime, battery: float, state: str = "idle") -> Sample:
    return Sample(siren_id, at, {"battery_voltage": battery, "state": state}, frozenset())


async def test_store_thins_numbers_but_keeps_every_discrete_change(tmp_path: Path) -> None:
    bus = Bus()
    db = Database(tmp_path / "t.db")
    await db.start()
    store = TelemetryStore(db, bus, StorageConfig(telemetry_min_interval_s=60), flush_interval_s=0)
    await store.start()
    t0 = datetime.now(UTC)
    for i in range(10):  # ten polls two seconds apart, nothing discrete changes
        bus.publish(SampleReceived(sample("a", t0 + timedelta(seconds=2 * i), 27.0 - i / 100)))
    bus.publish(SampleReceived(sample("a", t0 + timedelta(seconds=21), 26.9, state="sounding")))
    bus.publish(SampleReceived(sample("a", t0 + timedelta(seconds=50), 26.85, state="sounding")))
    bus.publish(SampleReceived(sample("a", t0 + timedelta(seconds=82), 26.8, state="sounding")))
    await wait_until(lambda: store.written + store.thinned == 13, 3, "all handled")
    history = await store.history("a", t0 - timedelta(seconds=1), 100)
    assert [(h["values"]["state"], h["values"]["battery_voltage"]) for h in history] == [
        ("idle", 27.0), ("sounding", 26.9), ("sounding", 26.8)]
    await store.stop()
    await db.stop()


async def test_samples_survive_a_restart_and_retention_drops_only_old_ones(
        tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    config = StorageConfig(telemetry_min_interval_s=0, telemetry_retention_days=1)
    now = datetime.now(UTC)
    for battery in (26.0, 26.1):  # the second round reopens the same file
        bus, db = Bus(), Database(path)
        await db.start()
        store = TelemetryStore(db, bus, config, flush_interval_s=0)
        await store.start()
        bus.publish(SampleReceived(sample("a", now + timedelta(seconds=battery), battery)))
        await wait_until(lambda s=store: s.written == 1, 3, "written")  # type: ignore[misc]
        await store.stop()
        await db.stop()
    old = (now - timedelta(days=3)).timestamp()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO telemetry VALUES ('a', ?, NULL, '[]', '{\"battery_voltage\": 20}')",
                     (old,))
    db = Database(path)
    await db.start()
    store = TelemetryStore(db, Bus(), config)
    assert await store.apply_retention() == 1
    history = await store.history("a", now - timedelta(days=10), 100)
    assert [h["values"]["battery_voltage"] for h in history] == [26.0, 26.1]
    await db.stop()


async def test_stored_rows_are_json_faults_and_a_non_finite_reading_included(
        tmp_path: Path) -> None:
    """Rows are written as plain JSON (SQLite's json functions read them): faults sorted, a
    label with non-ASCII text intact, and a NaN reading (a float32 register can hold one) as
    null, which history shows as None and leaves out of a bucket's mean."""
    bus, db = Bus(), Database(tmp_path / "t.db")
    await db.start()
    store = TelemetryStore(db, bus, StorageConfig(telemetry_min_interval_s=0), flush_interval_s=0)
    await store.start()
    t0 = datetime.now(UTC)
    readings = [27.0, float("nan"), 26.0]
    for i, battery in enumerate(readings):
        bus.publish(SampleReceived(Sample(
            "a", t0 + timedelta(seconds=i), {"battery_voltage": battery, "site": "东区"},
            frozenset({"door_open", "amplifier_fault"}))))
    await wait_until(lambda: store.written == 3, 3, "written")
    raw = await store.history("a", t0 - timedelta(seconds=1), 100)
    assert [h["values"]["battery_voltage"] for h in raw] == [27.0, None, 26.0]
    assert raw[0]["faults"] == ["amplifier_fault", "door_open"]
    assert raw[0]["values"]["site"] == "东区"
    bucket = await store.history("a", t0 - timedelta(seconds=1), 100, resolution_s=3600)
    assert bucket[0]["values"]["battery_voltage"] == 26.5 and bucket[0]["samples"] == 3
    await store.stop()
    await db.stop()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT count(*) FROM telemetry WHERE json_valid(data) "
                            "AND json_valid(faults)").fetchone()[0] == 3


@pytest.mark.parametrize("broker", ["auto", "amqtt"])
def test_demo_command_serves_the_district_and_cleans_up(tmp_path: Path, broker: str) -> None:
    """The README's main command: simulators + embedded broker + gateway + API, then Ctrl-C
    leaves nothing behind. `auto` takes mosquitto when installed; amqtt is the fallback."""
    port, sim_port = free_ports(2)
    # Output to a file: an unread pipe fills at 64 KiB and then blocks the demo's logging.
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "siren_gateway", "demo", "--port", str(port),
             "--sim-port", str(sim_port), "--data-dir", str(tmp_path), "--broker", broker],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 60
        sirens: list[dict[str, object]] = []
        headers: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                if not headers:  # the demo's viewer account, as documented in the README
                    token = httpx.post(f"http://127.0.0.1:{port}/api/auth/token", timeout=5,
                                       data={"username": "viewer", "password": "viewer-demo"})
                    headers["Authorization"] = f"Bearer {token.json()['access_token']}"
                sirens = httpx.get(f"http://127.0.0.1:{port}/api/sirens", timeout=2,
                                   headers=headers).json()
                if len(sirens) == 20 and all(s["online"] for s in sirens):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert len(sirens) == 20 and all(s["online"] for s in sirens), (
            sirens, log_path.read_text(errors="replace")[-3000:])
        truth = httpx.get(f"http://127.0.0.1:{sim_port}/sirens", timeout=5).json()
        assert len(truth) == 20
        assert sum(s["profile"] == "generic_mqtt_siren" for s in sirens) == 4
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the simulator fleet runs in its own process"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    output = log_path.read_text(errors="replace")
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/api/sirens" in output
    assert "MQTT broker:" in output and (broker == "auto" or "(amqtt, embedded)" in output)
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert (tmp_path / "demo.db").exists()


def test_ports_chosen_but_not_yet_bound_are_never_handed_out_again() -> None:
    """The demo's caller picks the API and simulator-control ports from the same range the
    demo then picks its sirens' and broker's ports from; neither is bound yet, so only being
    told keeps them apart (a CI run's demo once gave its control port to a siren too)."""
    state = random.getstate()
    try:
        random.seed(918)
        first = free_ports(3)
        random.seed(918)  # the same candidates, in the same order
        again = free_ports(3, avoid={first[0]})
        random.seed(918)
        site = assign_free_ports(generate_site(20), avoid=set(first))
    finally:
        random.setstate(state)
    assert first[0] not in again and set(first[1:]) <= set(again)
    assert not {s["link"]["port"] for s in site["sirens"] if "port" in s["link"]} & set(first)


@pytest.mark.parametrize("args", [["demo", "--sirens", "0"]])
def test_demo_rejects_a_bad_size(args: list[str]) -> None:
    from siren_gateway.cli import main

    assert main(args) == 2


async def test_long_ranges_are_downsampled_not_cut(tmp_path: Path) -> None:
    bus, db = Bus(), Database(tmp_path / "t.db")
    await db.start()
    store = TelemetryStore(db, bus, StorageConfig(telemetry_min_interval_s=0), flush_interval_s=0)
    await store.start()
    now = datetime.now(UTC)
    start = now - timedelta(hours=10)
    for minute in range(600):  # ten hours, one sample a minute, battery falling steadily
        state = "sounding" if minute == 450 else "idle"
        bus.publish(SampleReceived(sample("a", start + timedelta(minutes=minute),
                                          27.0 - minute / 100, state)))
    await wait_until(lambda: store.written == 600, 5, "written")
    full = await store.history("a", start - timedelta(seconds=1), 1000)
    assert len(full) == 600 and "bucket_s" not in full[0]
    coarse = await store.history("a", start - timedelta(seconds=1), 60)
    assert 55 <= len(coarse) <= 60  # the whole range, in about `limit` buckets
    assert all(b["samples"] >= 9 for b in coarse[:-1])
    batteries = [b["values"]["battery_voltage"] for b in coarse]
    assert batteries == sorted(batteries, reverse=True)  # the trend survives
    assert batteries[0] == pytest.approx(27.0 - 4.5 / 100, abs=0.02)  # mean of the first bucket
    hourly = await store.history("a", start - timedelta(seconds=1), 100, resolution_s=3600)
    assert len(hourly) in (10, 11) and hourly[0]["bucket_s"] == 3600
    assert any(b["values"]["state"] == "idle" for b in hourly)
    await store.stop()
    await db.stop()


async def test_an_outbox_key_makes_a_second_put_of_the_same_notification_a_no_op(
        tmp_path: Path) -> None:
    """An alert raised again after a crash lost its unwritten record is not announced twice."""
    from siren_gateway.alerts.outbox import Outbox
    from siren_gateway.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "outbox.db")
    await store.start()
    db = store.database
    try:
        outbox = Outbox(store)
        await outbox.start()
        first = await outbox.put("webhook:x", {"n": 1}, key="alert 7 mains_lost s1 raised")
        again = await outbox.put("webhook:x", {"n": 2}, key="alert 7 mains_lost s1 raised")
        other = await outbox.put("webhook:x", {"n": 3}, key="alert 7 mains_lost s1 cleared")
        assert first == again != other
        rows = await db.run(lambda conn: conn.execute("SELECT id, body FROM outbox").fetchall())
        assert len(rows) == 2 and '"n": 1' in dict(rows)[first]
    finally:
        await store.stop()

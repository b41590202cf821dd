"""The fleet at a glance over real sockets: the summary the wall display shows, the last day's
curve from stored alerts, the map's tile server in the pages' content policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulators.sitegen import generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.maintenance.history import SirenHistory
from siren_gateway.store.sqlite import SqliteStore
from tests.conftest import FakeClock, StartDistrict, scripted_alert, shanghai, wait_until, with_users
from tests.test_activation import Api
from tests.test_workorders import StartGateway


async def test_the_summary_counts_what_the_sirens_report(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(generate_site(4, poll_interval_s=0.25, timeout_s=0.3))
    site["sirens"][3]["inhibited"] = True
    site["map"] = {"tile_url": "http://tiles.example.lan:8088/{z}/{x}/{y}.png"}
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "all online")
    viewer = await Api(gateway).login("viewer")
    first: dict[str, Any] = {}

    async def settled() -> bool:  # (one look could fall into a siren's stale moment)
        nonlocal first
        first = (await viewer.get("/api/fleet/summary")).json()
        return (first["total"], first["ready"], first["with_faults"], first["offline"],
                first["inhibited"]) == (4, 3, 0, 0, 1)

    await wait_until(settled, 10, "3 of 4 ready, 1 inhibited")
    assert first["classes"]["inhibited"] == 1 and first["ready_share"] == 0.75
    # An amplifier fault silences s00001; an open door (minor) leaves s00002 able to sound.
    await simulated.control.inject("s00001", "amplifier_fault", amplifier=2)
    await simulated.control.inject("s00002", "door_open")

    async def counted() -> bool:
        now = (await viewer.get("/api/fleet/summary")).json()
        return bool(now["with_faults"] == 2 and now["ready"] == 2)

    await wait_until(counted, 10, "both faults counted")
    sirens = {s["id"]: s["status_class"] for s in (await viewer.get("/api/sirens")).json()}
    assert sirens == {"s00001": "fault", "s00002": "degraded", "s00003": "healthy",
                      "s00004": "inhibited"}
    # A silent siren is offline.
    await simulated.control.inject("s00003", "no_response")
    await wait_until(lambda: gateway.fleet.states["s00003"].status_class == "offline", 10,
                     "s00003 offline")
    assert (await viewer.get("/api/fleet/summary")).json()["offline"] == 1
    # The pages may draw the site's tiles, and nothing else from outside.
    page = await viewer.http.get("/")
    policy = page.headers["content-security-policy"]
    assert "img-src 'self' data: http://tiles.example.lan:8088;" in policy
    assert (await viewer.get("/api/site")).json()["map"]["tile_url"].startswith("http://tiles")


async def test_the_last_days_curve_comes_from_the_stored_alerts(tmp_path: Path) -> None:
    site = load_site(write_site(generate_site(3), tmp_path / "site.yaml"))
    store = SqliteStore(tmp_path / "history.db")
    await store.start()
    try:
        await store.alerts.write([
            scripted_alert(1, "offline", "s00001", "2027-03-10 01:00", "2027-03-10 03:00"),
            scripted_alert(2, "mains_lost", "s00002", "2027-03-10 02:00", None),
            scripted_alert(3, "battery_low", "s00003", "2027-03-10 02:00", None),  # not a device fault
            scripted_alert(4, "offline", "s00003", "2027-03-09 12:00", "2027-03-09 13:00"),  # before
            scripted_alert(5, "offline", "s00002", "2027-03-10 02:00", "2027-03-10 02:00"),  # none
            # one fault ends as the next begins: no gap at 03:00
            scripted_alert(6, "mains_lost", "s00001", "2027-03-10 01:00", "2027-03-10 03:00"),
            scripted_alert(7, "mains_lost", "s00001", "2027-03-10 03:00", None)])
        history = SirenHistory(site.catalogue, {}, "Asia/Shanghai", store,
                               FakeClock(shanghai("2027-03-10 04:00")), frozenset({"mains_lost"}))
        curve = await history.fleet_series(4, 5)  # 00:00, 01:00 ... 04:00
        assert [(p["online"], p["with_faults"]) for p in curve["points"]] == [
            (3, 0), (2, 1), (2, 2), (3, 2), (3, 2)]
        assert curve["sirens"] == 3
    finally:
        await store.stop()

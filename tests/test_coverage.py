"""Audible coverage: the sound model against geometry, incremental against full, what-if and
siting against brute force, and the live loop against the simulator."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from shapely.geometry import Point, Polygon, box, mapping, shape

from simulators.sitegen import generate_site
from siren_gateway.config.common import ConfigError
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import Site
from siren_gateway.coverage.config import CoverageConfig, Source, ZoneArea
from siren_gateway.coverage.engine import Candidate
from siren_gateway.coverage.grid import CoverageGrid, Projection
from siren_gateway.gateway import Gateway
from tests.conftest import StartDistrict, wait_until, with_users
from tests.test_activation import Api

StartGateway = Callable[[Site], Awaitable[Gateway]]
LAT0, LON0 = 32.06, 118.82
# No air and no excess: the reach then has a closed form, r = 30 * 2 ** ((L30 - T) / k).
PLAIN = CoverageConfig(absorption_db_per_km=0.0, excess_db_per_km={"open": 0.0, "suburban": 0.0,
                                                                   "urban": 0.0}, cell_m=10.0)


def square_zone(half_m: float, zone_id: str = "z", kind: Any = "open",
                hole_m: float = 0.0) -> ZoneArea:
    projection = Projection(LAT0, LON0)
    corners = [projection.latlon(x, y) for x, y in
               [(-half_m, -half_m), (half_m, -half_m), (half_m, half_m), (-half_m, half_m)]]
    shell = [(lon, lat) for lat, lon in corners]
    holes = []
    if hole_m:
        inner = [projection.latlon(x, y) for x, y in
                 [(-hole_m, -hole_m), (hole_m, -hole_m), (hole_m, hole_m), (-hole_m, hole_m)]]
        holes = [[(lon, lat) for lat, lon in inner]]
    return ZoneArea(zone_id, Polygon(shell, holes), kind, 70.0, 0.95)


def at(x: float, y: float, level: float, name: str = "s") -> Source:
    lat, lon = Projection(LAT0, LON0).latlon(x, y)
    return Source(name, lat, lon, level)


def covered_km2(grid: CoverageGrid) -> float:
    return float(np.count_nonzero(grid.covered())) * grid.cell_m ** 2 / 1e6


def test_one_siren_covers_the_analytic_disk() -> None:
    grid = CoverageGrid([square_zone(3000)], PLAIN)
    grid.set_sources([at(0, 0, 120.0)])
    grid.recompute(np.array([True]))
    radius = 30 * 2 ** ((120.0 - 70.0) / PLAIN.loss_per_doubling_db)  # 960 m
    expected = math.pi * radius ** 2 / 1e6
    tolerance = 2 * math.pi * radius * grid.cell_m / 1e6  # one cell all round the edge
    assert abs(covered_km2(grid) - expected) < tolerance, (covered_km2(grid), expected)
    # Farther out is quieter: air and the zone kind shrink the disk, never grow it.
    urban = CoverageConfig(cell_m=10.0)
    damp = CoverageGrid([square_zone(3000, kind="urban")], urban)
    damp.set_sources([at(0, 0, 120.0)])
    damp.recompute(np.array([True]))
    assert covered_km2(damp) < expected - tolerance


def test_two_overlapping_sirens_cover_the_union_of_their_disks() -> None:
    grid = CoverageGrid([square_zone(3000)], PLAIN)
    grid.set_sources([at(-400, 0, 120.0, "a"), at(500, 300, 114.0, "b")])
    grid.recompute(np.array([True, True]))
    ra = 30 * 2 ** (50 / 10)
    rb = 30 * 2 ** (44 / 10)
    union = Point(-400, 0).buffer(ra, 256).union(Point(500, 300).buffer(rb, 256)).area / 1e6
    perimeter = 2 * math.pi * (ra + rb)
    assert abs(covered_km2(grid) - union) < perimeter * grid.cell_m / 1e6
    assert covered_km2(grid) < math.pi * (ra ** 2 + rb ** 2) / 1e6  # the overlap counts once


def test_a_gap_between_sirens_and_a_hole_in_the_zone() -> None:
    zone = square_zone(3000, hole_m=200)
    grid = CoverageGrid([zone], PLAIN)
    grid.set_sources([at(-2000, 0, 120.0, "west"), at(2000, 0, 120.0, "east")])
    grid.recompute(np.array([True, True]))
    row, col = grid.ny // 2, grid.nx // 2
    assert grid.zone[row, col] == -1  # the zone's own hole is not part of it
    gap_col = col + int(300 // grid.cell_m)  # 1,700 m from the east siren, which reaches 960
    assert grid.zone[row, gap_col] == 0 and not grid.covered()[row, gap_col]
    west_col = col - int(2000 // grid.cell_m)
    assert grid.covered()[row, west_col]
    share = grid.covered_per_zone()[0] / grid.cells_per_zone[0]
    assert 0.1 < share < 0.5


def test_switching_one_siren_gives_what_a_full_recomputation_gives() -> None:
    rng = random.Random(7)
    config = CoverageConfig(cell_m=25.0)
    zones = [square_zone(4000, "a", "urban"), square_zone(6000, "b", "suburban")]
    grid = CoverageGrid(zones, config)
    sources = [at(rng.uniform(-6000, 6000), rng.uniform(-6000, 6000), rng.uniform(105, 128),
                  f"s{i}") for i in range(60)]
    grid.set_sources(sources)
    on = np.array([rng.random() < 0.7 for _ in sources])
    grid.recompute(on)
    reference = CoverageGrid(zones, config)
    reference.set_sources(sources)
    for _ in range(40):
        index = rng.randrange(len(sources))
        on[index] = not on[index]
        grid.switch(index, bool(on[index]))
        reference.recompute(on)
        assert np.array_equal(grid.best, reference.best)
        assert np.array_equal(grid.covered_per_zone(), reference.covered_per_zone())


def site_with_area(sirens: int = 4, rated_db_c: float = 125.0,
                   **coverage: Any) -> dict[str, Any]:
    site = generate_site(sirens, poll_interval_s=0.25, timeout_s=0.3)
    lats = [s["location"]["lat"] for s in site["sirens"]]
    lons = [s["location"]["lon"] for s in site["sirens"]]
    pad = 0.004
    area = box(min(lons) - pad, min(lats) - pad, max(lons) + pad, max(lats) + pad)
    zone_id = site["zones"][0]["id"]
    site["zones"] = [site["zones"][0] | {"area": mapping(area), "kind": "suburban"}]
    for siren in site["sirens"]:
        siren["zones"] = [zone_id]
        siren["rated_db_c"] = rated_db_c
    site["coverage"] = {"cell_m": 20.0} | coverage
    site["alerts"] = {"clear_after_s": 0.5, "offline_after_s": 60.0}
    return site


async def test_what_if_and_siting_agree_with_brute_force(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    simulated = start_district(site_with_area(6, rated_db_c=108.0))
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 6, 10, "online")
    engine = gateway.coverage
    await wait_until(lambda: engine.summary()["sirens_counted"] == 6, 5, "all counted")
    grid = engine.grid
    assert grid is not None

    def brute(sources: list[Source]) -> float:
        fresh = CoverageGrid(grid.zones, grid.config)
        fresh.set_sources(sources)
        fresh.recompute(np.ones(len(sources), dtype=bool))
        return round(float(fresh.covered_per_zone().sum()) / int(fresh.cells_per_zone.sum()), 4)

    sources = list(engine.sources)
    lat = sum(s.lat for s in sources) / len(sources)
    lon = sum(s.lon for s in sources) / len(sources)
    result = await engine.what_if(remove=[sources[0].id], levels={sources[1].id: 100.0},
                                  add=[Candidate(lat + 0.003, lon + 0.003, 118.0, "new")])
    expected = [*sources[2:], Source(sources[1].id, sources[1].lat, sources[1].lon, 100.0),
                Source("new", lat + 0.003, lon + 0.003, 118.0)]
    assert result["would_be"]["district"] == brute(expected)
    assert result["now"]["district"] == brute(sources)

    candidates = [Candidate(lat + dy, lon + dx, 115.0, f"c{i}") for i, (dy, dx) in
                  enumerate([(0.004, 0.004), (-0.004, -0.004), (0.0, 0.0), (0.004, -0.004)])]
    weak = await engine.what_if(remove=[s.id for s in sources[:3]], levels={}, add=[])
    assert weak["would_be"]["district"] < weak["now"]["district"]
    siting = await engine.siting(candidates, k=2)
    base = brute(sources)
    for row, candidate in zip(siting["candidates"], candidates, strict=True):
        alone = brute([*sources, Source(candidate.id or "", candidate.lat, candidate.lon, 115.0)])
        total = int(grid.cells_per_zone.sum())
        assert abs(row["gain_cells"] / total - (alone - base)) < 2e-4
    # The greedy pick: the first is the best alone; after it the district share is exact.
    first = siting["best"][0]
    assert first["gain_cells"] == max(r["gain_cells"] for r in siting["candidates"])
    chosen = [c for c in candidates if c.id == first["id"]]
    assert first["district_share_after"] == brute(
        [*sources, *(Source(c.id or "", c.lat, c.lon, 115.0) for c in chosen)])


async def test_a_siren_going_offline_lowers_coverage_and_raises_coverage_low(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    # Sirens far enough apart that each one's own area matters; target 99 %.
    site = site_with_area(4, target_share=0.99)
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    engine = gateway.coverage
    await wait_until(lambda: engine.summary()["sirens_counted"] == 4, 5, "all counted")
    healthy = engine.summary()["zones"][0]["covered_share"]

    def coverage_alerts(state: str | None = None) -> list[dict[str, Any]]:
        return [a for a in gateway.alerts.query() if a["rule"] == "coverage_low"
                and (state is None or a["state"] == state)]

    if healthy < 0.99:
        pytest.fail(f"the healthy district should meet its target: {engine.summary()}")
    assert not coverage_alerts()
    await simulated.control.inject("s00002", "no_response")
    await wait_until(lambda: engine.summary()["sirens_counted"] == 3, 10, "siren not counted")
    zone = engine.summary()["zones"][0]
    assert zone["covered_share"] < healthy and zone["below_target"]
    assert "s00002" in zone["repair"]
    await wait_until(lambda: bool(coverage_alerts("active")), 5, "coverage_low raised")
    alert = coverage_alerts("active")[0]
    assert "s00002" in alert["message"] and alert["zones"] == [zone["zone"]]
    assert f'siren_gateway_coverage_ratio{{zone="{zone["zone"]}"}} ' in gateway.instruments.expose().decode()
    layer = engine.layer()
    assert "3" in layer["cells"]  # cells lost since every siren was healthy
    await simulated.control.inject("s00002", "no_response", active=False)
    await wait_until(lambda: not coverage_alerts("active"), 10, "coverage_low cleared")
    assert engine.summary()["zones"][0]["covered_share"] == healthy



async def test_the_coverage_api_by_role_and_a_siting_search_over_a_zone(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(site_with_area(4, rated_db_c=108.0))
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    viewer, operator = await Api(gateway).login("viewer"), await Api(gateway).login("operator")
    summary = (await viewer.get("/api/coverage")).json()
    assert summary["enabled"] and len(summary["zones"]) == 1
    layer = (await viewer.get("/api/coverage/layer")).json()
    assert len(layer["cells"]) == layer["width"] * layer["height"]
    zone = summary["zones"][0]["zone"]
    body = {"zone": zone, "spacing_m": 300.0, "k": 3, "rated_db_c": 112.0}
    assert (await viewer.post("/api/coverage/siting", body)).status_code == 403
    assert (await operator.post("/api/coverage/siting", body | {"candidates": []})
            ).status_code == 422  # a zone or candidates, not both
    found = (await operator.post("/api/coverage/siting", body)).json()
    area = next(z for z in gateway.site.config.zones if z.id == zone).area
    assert area is not None
    polygon = shape(area)
    assert found["candidates"] and all(polygon.contains(Point(c["lon"], c["lat"]))
                                       for c in found["candidates"])
    best = found["best"]
    assert 1 <= len(best) <= 3
    gains = [b["gain_cells"] for b in best]
    assert gains == sorted(gains, reverse=True) and gains[0] == max(
        c["gain_cells"] for c in found["candidates"])
    shares = [b["district_share_after"] for b in best]
    assert shares == sorted(shares) and shares[0] > summary["district"]["covered_share"]
    assert (await operator.post("/api/coverage/siting", {"zone": "nowhere"})).status_code == 404
    what_if = (await operator.post("/api/coverage/what-if",
                                   {"remove": ["s00001", "ghost"]})).json()
    assert what_if["unknown_sirens"] == ["ghost"]
    assert what_if["would_be"]["district"] <= what_if["now"]["district"]


@pytest.mark.parametrize(("area", "words"), [
    ({"type": "Point", "coordinates": [118.8, 32.0]}, "Polygon or MultiPolygon"),
    ({"type": "Polygon", "coordinates": [[[118.8, 32.0], [118.81, 32.01], [118.81, 32.0],
                                          [118.8, 32.01], [118.8, 32.0]]]}, "invalid polygon"),
    ({"type": "Polygon", "coordinates": [[[32.0, 200.0], [32.1, 200.0], [32.1, 201.0],
                                          [32.0, 200.0]]]}, "[lon, lat]"),
    ({"type": "Polygon"}, "not a GeoJSON geometry"),
])
def test_a_bad_zone_area_is_refused_with_its_path(tmp_path: Path, area: dict[str, Any],
                                                   words: str) -> None:
    site = site_with_area(2)
    site["zones"][0]["area"] = area
    file = tmp_path / "site.yaml"
    file.write_text(yaml.safe_dump(site), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_site(file)
    assert [p.path for p in caught.value.problems] == ["zones[0]"]
    assert words in caught.value.problems[0].message


def test_a_grid_past_its_cell_limit_is_refused_not_allocated() -> None:
    with pytest.raises(ValueError, match="max_cells"):
        CoverageGrid([square_zone(20_000)], CoverageConfig(cell_m=5.0, max_cells=1_000_000))

"""Live audible coverage: which parts of each zone would hear the alarm from the sirens that can
sound right now, what a change would do, and where a new siren helps most.

A siren counts when it can sound now: online, not inhibited, armed (when its controller
reports it) and free of the faults that silence it (its profile's `silencing_faults` and
coverage.silencing_faults). Every batch of status changes switches the sirens that changed,
each recomputing only its own window of the raster; a zone falling under its target share
publishes CoverageChanged (the alert engine raises `coverage_low`, listing the sirens whose
repair would restore it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from siren_gateway.config.site import Catalogue, SirenConfig
from siren_gateway.coverage.config import CoverageConfig, Source, ZoneArea, zone_area
from siren_gateway.live.bus import Bus, CoverageChanged, SampleReceived, StatusChanged, Subscription
from siren_gateway.live.fleet import Fleet, Reachability, SirenState
from siren_gateway.runtime.tasks import cancel_and_wait

if TYPE_CHECKING:  # numpy and shapely are imported only where a zone has an area
    import numpy as np

    from siren_gateway.coverage.grid import CoverageGrid

log = logging.getLogger(__name__)

BATCH_PAUSE_S = 0.2  # status changes are gathered this long: one recount per batch
MAX_REPAIR_LIST = 20
LAYER_MAX_SIDE = 400  # the map's raster is sampled down to at most this many cells a side


@dataclass(frozen=True, slots=True)
class Candidate:
    lat: float
    lon: float
    rated_db_c: float | None = None
    id: str | None = None


class CoverageEngine:
    def __init__(self, catalogue: Catalogue, config: CoverageConfig, fleet: Fleet, bus: Bus
                 ) -> None:
        self.catalogue, self.fleet, self.bus = catalogue, fleet, bus
        self.config = config
        self._names = {z.id: z.name for z in catalogue.zones}
        zones: list[ZoneArea] = []
        for zone in catalogue.zones:
            if zone.area is None:
                continue
            threshold = zone.threshold_db if zone.threshold_db is not None else max(
                self.config.threshold_db,
                (zone.ambient_db + self.config.ambient_margin_db)
                if zone.ambient_db is not None else 0.0)
            zones.append(ZoneArea(zone.id, zone_area(zone.area), zone.kind, threshold,
                                  zone.target_share or self.config.target_share))
        self.grid: CoverageGrid | None = None
        if zones:
            from siren_gateway.coverage.grid import CoverageGrid

            self.grid = CoverageGrid(zones, self.config)
        self.sources = [Source(s.id, s.location.lat, s.location.lon, self._rated(s))
                        for s in catalogue.sirens]
        self._index = {s.id: i for i, s in enumerate(self.sources)}
        by_profile = {name: frozenset(self.config.silencing_faults)
                      | frozenset(profile.spec.silencing_faults)
                      for name, profile in catalogue.profiles.items()}
        self._silencing = {s.id: by_profile[s.profile] for s in catalogue.sirens}  # shared sets
        self._healthy: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        self._healthy_counts: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._counts: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._counted = 0  # sirens counted in _counts
        self._below: dict[str, bool] = {}
        self._repair: dict[str, tuple[str, ...]] = {}
        self._layer: dict[str, Any] | None = None  # built on demand, until the next change
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.recomputations = 0
        self._started = 0.0
        self.settled = False  # every siren heard from (or the start-up grace is over)

    def _rated(self, siren: SirenConfig) -> float:
        rated = self.catalogue.rated_db_c(siren)
        return rated if rated is not None else self.config.default_rated_db_c

    @property
    def enabled(self) -> bool:
        return self.grid is not None

    def can_sound(self, state: SirenState) -> bool:
        if state.config.inhibited or state.reachability is not Reachability.ONLINE:
            return False
        if state.sample is not None and state.sample.values.get("armed") is False:
            return False
        return not (state.faults & self._silencing[state.config.id])

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        grid = self.grid
        if grid is None:
            return
        self._subscription = self.bus.subscribe("coverage", maxsize=100_000,
                                                kinds=(SampleReceived, StatusChanged))
        import numpy as np

        on = self._availability()

        def initial() -> None:  # a large raster takes a noticeable fraction of a second
            grid.set_sources(self.sources)
            grid.recompute(np.ones(len(self.sources), dtype=bool))
            self._healthy = grid.covered()
            self._healthy_counts = grid.covered_per_zone(self._healthy)
            grid.recompute(on)

        self._started = time.monotonic()
        await asyncio.to_thread(initial)
        await self._recount()
        self._task = asyncio.create_task(self._consume(), name="coverage")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None

    def _availability(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        import numpy as np

        states = self.fleet.states
        return np.array([self.can_sound(states[s.id]) for s in self.sources], dtype=bool)

    async def _consume(self) -> None:
        assert self._subscription is not None and self.grid is not None
        subscription, grid = self._subscription, self.grid
        dropped = subscription.dropped
        while True:
            touched: set[str] = set()
            try:
                # Unsettled, it also wakes by itself to see the start-up grace run out.
                async with asyncio.timeout(None if self.settled else 1.0):
                    touched.add(_siren_of(await subscription.get()))
            except TimeoutError:
                pass
            while not subscription.queue.empty():
                touched.add(_siren_of(subscription.queue.get_nowait()))
            if subscription.dropped != dropped:  # events lost: look at every siren again
                dropped = subscription.dropped
                touched = set(self._index)
            changed = False
            for siren_id in touched:
                index = self._index.get(siren_id)
                if index is None:
                    continue
                on = self.can_sound(self.fleet.states[siren_id])
                if bool(grid.on[index]) != on:
                    grid.switch(index, on)
                    changed = True
            if not self.settled and self._settle():
                changed = True  # the first count that may raise coverage_low
            if changed:
                self.recomputations += 1
                await self._recount()
            await asyncio.sleep(BATCH_PAUSE_S)

    def _settle(self) -> bool:
        unheard = any(s.reachability is Reachability.UNKNOWN for s in self.fleet.states.values())
        grace = time.monotonic() - self._started >= self.config.startup_grace_s
        self.settled = not unheard or grace
        return self.settled

    # -- results -------------------------------------------------------------------------------

    async def _recount(self) -> None:
        """Count again after a change. The counts, the repair lists and the number of sirens
        counted change together, after the repairs are chosen, so no reader sees a zone below
        its target without the repairs that would restore it."""
        grid = self.grid
        assert grid is not None
        counts = grid.covered_per_zone()
        counted = int(grid.on.sum())
        repairs: dict[int, tuple[str, ...]] = {}
        shares = [self._share(i, counts) for i in range(len(grid.zones))]
        below = [i for i, z in enumerate(grid.zones) if shares[i] < z.target_share]
        if self.settled and below:
            # Choosing the repairs tries each siren that cannot sound: off the loop, on a copy.
            trial = grid.copy()
            repairs = await asyncio.to_thread(
                lambda: {i: self.repairs(trial.copy(), i) for i in below})
        self._counts, self._counted, self._layer = counts, counted, None
        if not self.settled:
            return
        for index, zone in enumerate(grid.zones):
            is_below = index in repairs
            if is_below or self._below.get(zone.id):
                repair = self._repair[zone.id] = repairs.get(index, ())
                self.bus.publish(CoverageChanged(zone.id, self._names.get(zone.id, zone.id),
                                                 shares[index], zone.target_share, is_below,
                                                 repair))
            self._below[zone.id] = is_below

    def _share(self, index: int, counts: Any = None) -> float:
        grid = self.grid
        assert grid is not None
        counts = self._counts if counts is None else counts
        total = int(grid.cells_per_zone[index])
        return float(counts[index]) / total if total and counts is not None else 1.0

    def repairs(self, trial: CoverageGrid, zone_index: int) -> tuple[str, ...]:
        """Sirens not able to sound whose repair brings the zone back to its target, chosen
        greedily by the area each gives back (all that help, if the target is out of reach).
        `trial` is a copy of the grid, changed here."""
        zone = trial.zones[zone_index]
        chosen: list[str] = []
        near = trial.sources_reaching(trial.zone_windows[zone_index])
        off = [int(i) for i in near if not trial.on[i]]
        while off and len(chosen) < MAX_REPAIR_LIST:
            gain, best = max((trial.gain(self.sources[i], zone_index), i) for i in off)
            if gain <= 0:
                break
            trial.switch(best, True)
            off.remove(best)
            chosen.append(self.sources[best].id)
            if self._share(zone_index, trial.covered_per_zone()) >= zone.target_share:
                break
        return tuple(chosen)

    def summary(self) -> dict[str, Any]:
        grid = self.grid
        if grid is None or self._counts is None or self._healthy_counts is None:
            return {"enabled": False, "zones": [], "district": None}
        cell_km2 = (grid.cell_m / 1000) ** 2
        zones = []
        for index, zone in enumerate(grid.zones):
            cells = int(grid.cells_per_zone[index])
            zones.append({
                "zone": zone.id, "name": self._names.get(zone.id, zone.id),
                "kind": zone.kind, "threshold_db": zone.threshold_db,
                "target_share": zone.target_share, "area_km2": round(cells * cell_km2, 3),
                "covered_share": round(self._share(index), 4),
                "healthy_share": round(self._share(index, self._healthy_counts), 4),
                "below_target": self._share(index) < zone.target_share,
                "repair": list(self._repair.get(zone.id, ()))
                if self._share(index) < zone.target_share else [],
            })
        total = int(grid.cells_per_zone.sum())
        return {
            "enabled": True, "cell_m": grid.cell_m,
            "sirens_counted": self._counted, "sirens": len(self.sources),
            "zones": zones,
            "district": {
                "area_km2": round(total * cell_km2, 3),
                "covered_share": round(float(self._counts.sum()) / total, 4) if total else 1.0,
                "healthy_share": round(float(self._healthy_counts.sum()) / total, 4)
                if total else 1.0,
            },
        }

    def layer(self) -> dict[str, Any]:
        """The raster for the map, sampled down: per cell 0 outside every zone, 1 covered,
        2 not covered (nor when every siren is healthy), 3 lost (covered when all are)."""
        import numpy as np

        grid = self.grid
        if grid is None or self._healthy is None:
            return {"enabled": False}
        if self._layer is not None:
            return self._layer
        step = max(1, -(-max(grid.nx, grid.ny) // LAYER_MAX_SIDE))
        rows, cols = slice(step // 2, None, step), slice(step // 2, None, step)
        inside = (grid.zone >= 0)[rows, cols]
        covered = grid.covered()[rows, cols]
        healthy = self._healthy[rows, cols]
        code = np.where(~inside, 0, np.where(covered, 1, np.where(healthy, 3, 2)))
        south, west = grid.projection.latlon(grid.x0, grid.y0)
        north, east = grid.projection.latlon(grid.x0 + grid.nx * grid.cell_m,
                                             grid.y0 + grid.ny * grid.cell_m)
        self._layer = {
            "enabled": True, "width": int(code.shape[1]), "height": int(code.shape[0]),
            "bounds": {"south": south, "west": west, "north": north, "east": east},
            # row 0 is the southern edge
            "cells": (code.astype(np.uint8) + ord("0")).tobytes().decode("ascii"),
            "zones": [{"zone": z.id, "area": _rings(z.geometry)} for z in grid.zones],
        }
        return self._layer

    # -- what-if and siting ------------------------------------------------------------------

    def _trial(self, trial: CoverageGrid, remove: list[str], levels: dict[str, float],
               add: list[Candidate]) -> list[str]:
        unknown = [s for s in [*remove, *levels] if s not in self._index]
        for siren_id in remove:
            if siren_id in self._index:
                trial.switch(self._index[siren_id], False)
        for siren_id, level in levels.items():
            index = self._index.get(siren_id)
            if index is not None and siren_id not in remove:
                trial.set_level(index, level)
        for number, candidate in enumerate(add):
            trial.add_source(Source(candidate.id or f"new-{number + 1}", candidate.lat,
                                    candidate.lon,
                                    candidate.rated_db_c or self.config.default_rated_db_c))
        return unknown

    def _shares(self, trial: CoverageGrid) -> dict[str, Any]:
        counts = trial.covered_per_zone()
        total = int(trial.cells_per_zone.sum())
        return {
            "zones": {z.id: round(self._share(i, counts), 4) for i, z in enumerate(trial.zones)},
            "district": round(float(counts.sum()) / total, 4) if total else 1.0,
        }

    async def what_if(self, remove: list[str], levels: dict[str, float],
                      add: list[Candidate]) -> dict[str, Any]:
        if self.grid is None:
            raise LookupError("no zone has an area: coverage is off")
        now = self._shares(self.grid)
        trial = self.grid.copy()  # taken on the loop: a consistent picture

        def run() -> dict[str, Any]:
            unknown = self._trial(trial, remove, levels, add)
            return {"now": now, "would_be": self._shares(trial), "unknown_sirens": unknown}

        return await asyncio.to_thread(run)

    async def siting(self, candidates: list[Candidate], k: int) -> dict[str, Any]:
        if self.grid is None:
            raise LookupError("no zone has an area: coverage is off")
        grid = self.grid.copy()
        default = self.config.default_rated_db_c
        total = int(grid.cells_per_zone.sum()) or 1
        cell_km2 = (grid.cell_m / 1000) ** 2

        def run() -> dict[str, Any]:
            sources = [Source(c.id or f"c{n + 1}", c.lat, c.lon, c.rated_db_c or default)
                       for n, c in enumerate(candidates)]
            gains = [grid.gain(s) for s in sources]
            each = [{"id": s.id, "lat": s.lat, "lon": s.lon, "gain_cells": g,
                     "gain_km2": round(g * cell_km2, 4), "gain_share": round(g / total, 5)}
                    for s, g in zip(sources, gains, strict=True)]
            chosen: list[dict[str, Any]] = []
            left = list(range(len(sources)))
            while left and len(chosen) < k:
                gain, best = max((grid.gain(sources[i]), i) for i in left)
                if gain <= 0:
                    break
                grid.add_source(sources[best])
                left.remove(best)
                counts = grid.covered_per_zone()
                chosen.append({**each[best], "gain_cells": gain,
                               "gain_km2": round(gain * cell_km2, 4),
                               "district_share_after": round(float(counts.sum()) / total, 4)})
            return {"candidates": each, "best": chosen}

        return await asyncio.to_thread(run)

    def grid_candidates(self, zone_id: str, spacing_m: float, limit: int) -> list[Candidate]:
        """Points on a square grid over a zone's area (inside it), for siting searches."""
        import numpy as np
        import shapely

        grid = self.grid
        if grid is None:
            raise LookupError("no zone has an area: coverage is off")
        zone = next((z for z in grid.zones if z.id == zone_id), None)
        if zone is None:
            raise KeyError(zone_id)
        plane = grid.projection.geometry(zone.geometry)
        minx, miny, maxx, maxy = plane.bounds
        xs = np.arange(minx + spacing_m / 2, maxx, spacing_m)
        ys = np.arange(miny + spacing_m / 2, maxy, spacing_m)
        if len(xs) * len(ys) > limit * 20:
            raise ValueError(f"{len(xs) * len(ys)} grid points: use a larger spacing")
        gx, gy = np.meshgrid(xs, ys)
        inside = shapely.contains_xy(plane, gx, gy)
        points = list(zip(gx[inside].tolist(), gy[inside].tolist(), strict=True))
        if len(points) > limit:
            raise ValueError(f"{len(points)} candidate points (limit {limit}): use a larger "
                             "spacing")
        out = []
        for n, (x, y) in enumerate(points):
            lat, lon = grid.projection.latlon(x, y)
            out.append(Candidate(lat, lon, None, f"{zone_id}-{n + 1}"))
        return out

    def metrics(self) -> list[tuple[dict[str, str], float]]:
        grid = self.grid
        if grid is None or self._counts is None:
            return []
        return [({"zone": z.id}, self._share(i)) for i, z in enumerate(grid.zones)]


def _siren_of(event: object) -> str:
    if isinstance(event, SampleReceived):
        return event.sample.siren_id
    if isinstance(event, StatusChanged):
        return event.siren_id
    return ""


def _rings(geometry: Any) -> list[list[list[float]]]:
    """Exterior and interior rings as [lat, lon] lists, for drawing."""
    polygons = list(geometry.geoms) if geometry.geom_type == "MultiPolygon" else [geometry]
    rings: list[list[list[float]]] = []
    for polygon in polygons:
        for ring in [polygon.exterior, *polygon.interiors]:
            rings.append([[round(lat, 6), round(lon, 6)] for lon, lat in ring.coords])
    return rings

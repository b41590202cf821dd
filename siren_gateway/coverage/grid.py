"""Audible coverage on a raster: the loudest siren's level in every cell of the zones' areas.

The sound model (docs/coverage.md): a siren rated L30 dB(C) at 30 m is heard at distance d at

    L(d) = L30 - k * log2(max(d, 30) / 30) - (a + e) * max(d - 30, 0) / 1000

with k the loss per doubling of distance, a the air's absorption and e the excess attenuation
of the receiving cell's zone kind (both dB/km). A cell is covered when its loudest siren
reaches the cell's threshold.

Positions are projected onto a local plane (equirectangular about the site's centre): within
a district of tens of kilometres the error is well under the cell size. Each siren only
touches the cells within its reach (the distance where even the quietest zone's attenuation
leaves it below the lowest threshold), so a change of one siren recomputes its window only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from siren_gateway.coverage.config import CoverageConfig, Source, ZoneArea

EARTH_RADIUS_M = 6_371_008.8
NEAR_FIELD_M = 30.0  # ratings are given at 30 m; nearer, the level is taken as the rating

Floats = npt.NDArray[np.float32]


class Projection:
    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        self._kx = EARTH_RADIUS_M * math.cos(math.radians(lat0)) * math.pi / 180
        self._ky = EARTH_RADIUS_M * math.pi / 180

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.lon0) * self._kx, (lat - self.lat0) * self._ky

    def latlon(self, x: float, y: float) -> tuple[float, float]:
        return self.lat0 + y / self._ky, self.lon0 + x / self._kx

    def geometry(self, geometry: BaseGeometry) -> BaseGeometry:
        kx, ky, lon0, lat0 = self._kx, self._ky, self.lon0, self.lat0

        def to_plane(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return np.column_stack(((coords[:, 0] - lon0) * kx, (coords[:, 1] - lat0) * ky))

        return shapely.transform(geometry, to_plane)


class CoverageGrid:
    """The raster and the loudest level in each cell from the sources switched on."""

    def __init__(self, zones: Sequence[ZoneArea], config: CoverageConfig) -> None:
        if not zones:
            raise ValueError("no zone has an area")
        self.config = config
        self.zones = list(zones)
        bounds = np.array([z.geometry.bounds for z in zones])  # lon/lat
        min_lon, min_lat = bounds[:, 0].min(), bounds[:, 1].min()
        max_lon, max_lat = bounds[:, 2].max(), bounds[:, 3].max()
        self.projection = Projection((min_lat + max_lat) / 2, (min_lon + max_lon) / 2)
        planes = [self.projection.geometry(z.geometry) for z in zones]
        x0, y0 = (float(v) for v in np.min([p.bounds[:2] for p in planes], axis=0))
        x1, y1 = (float(v) for v in np.max([p.bounds[2:] for p in planes], axis=0))
        cell = config.cell_m
        self.cell_m = cell
        self.nx, self.ny = max(1, math.ceil((x1 - x0) / cell)), max(1, math.ceil((y1 - y0) / cell))
        if self.nx * self.ny > config.max_cells:
            raise ValueError(f"{self.nx * self.ny} cells of {cell:g} m exceed coverage.max_cells "
                             f"({config.max_cells}): use larger cells")
        self.x0, self.y0 = x0, y0
        self.xs = (x0 + (np.arange(self.nx) + 0.5) * cell).astype(np.float32)
        self.ys = (y0 + (np.arange(self.ny) + 0.5) * cell).astype(np.float32)
        # Each cell belongs to the first zone whose area holds its centre (-1: none).
        self.zone = np.full((self.ny, self.nx), -1, dtype=np.int16)
        self.threshold = np.full((self.ny, self.nx), np.inf, dtype=np.float32)
        per_m = np.zeros((self.ny, self.nx), dtype=np.float32)
        for index, (zone, plane) in enumerate(zip(zones, planes, strict=True)):
            shapely.prepare(plane)
            c0, r0, c1, r1 = self._window_of_bounds(plane.bounds)
            gx, gy = np.meshgrid(self.xs[c0:c1], self.ys[r0:r1])
            inside = shapely.contains_xy(plane, gx, gy) & (self.zone[r0:r1, c0:c1] < 0)
            self.zone[r0:r1, c0:c1][inside] = index
            self.threshold[r0:r1, c0:c1][inside] = zone.threshold_db
            per_m[r0:r1, c0:c1][inside] = (config.absorption_db_per_km
                                           + config.excess_db_per_km.get(zone.kind, 0.0)) / 1000
        self.per_m = per_m
        self.cells_per_zone = np.bincount(self.zone[self.zone >= 0], minlength=len(zones))
        # Each zone's window (c0, r0, c1, r1) on the raster: who can reach it is found from it.
        self.zone_windows = [self._window_of_bounds(p.bounds) for p in planes]
        self._min_threshold = min(z.threshold_db for z in zones)
        self._min_per_m = config.absorption_db_per_km / 1000 + min(
            config.excess_db_per_km.get(z.kind, 0.0) for z in zones) / 1000
        self.sources: list[Source] = []
        self._sx = np.zeros(0, dtype=np.float64)
        self._sy = np.zeros(0, dtype=np.float64)
        self._reach = np.zeros(0, dtype=np.float64)
        self.on = np.zeros(0, dtype=bool)
        self.best = np.full((self.ny, self.nx), -np.inf, dtype=np.float32)
        self.owner = np.full((self.ny, self.nx), -1, dtype=np.int32)

    # -- geometry helpers -----------------------------------------------------------------

    def _window_of_bounds(self, bounds: tuple[float, float, float, float]
                          ) -> tuple[int, int, int, int]:
        minx, miny, maxx, maxy = bounds
        cell = self.cell_m
        c0 = max(0, int((minx - self.x0) // cell))
        r0 = max(0, int((miny - self.y0) // cell))
        c1 = min(self.nx, int((maxx - self.x0) // cell) + 1)
        r1 = min(self.ny, int((maxy - self.y0) // cell) + 1)
        return c0, r0, c1, r1

    def reach_m(self, rated_db_c: float) -> float:
        """Beyond this distance the source is under the lowest threshold everywhere."""
        k, a, floor = self.config.loss_per_doubling_db, self._min_per_m, self._min_threshold
        if rated_db_c <= floor:
            return NEAR_FIELD_M

        def level(d: float) -> float:
            return rated_db_c - k * math.log2(d / NEAR_FIELD_M) - a * (d - NEAR_FIELD_M)

        lo, hi = NEAR_FIELD_M, NEAR_FIELD_M * 2 ** ((rated_db_c - floor) / k)
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if level(mid) >= floor else (lo, mid)
        return hi + self.cell_m  # a cell's centre may lie half a cell beyond its edge

    def window(self, x: float, y: float, reach: float) -> tuple[int, int, int, int]:
        return self._window_of_bounds((x - reach, y - reach, x + reach, y + reach))

    def levels(self, x: float, y: float, rated_db_c: float,
               win: tuple[int, int, int, int]) -> Floats:
        """The source's level in every cell of the window (r0:r1, c0:c1)."""
        c0, r0, c1, r1 = win
        dx = self.xs[c0:c1] - np.float32(x)
        dy = self.ys[r0:r1] - np.float32(y)
        d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
        np.maximum(d, NEAR_FIELD_M, out=d)
        k = np.float32(self.config.loss_per_doubling_db)
        out: Floats = np.float32(rated_db_c) - k * np.log2(d / np.float32(NEAR_FIELD_M))
        out -= self.per_m[r0:r1, c0:c1] * (d - np.float32(NEAR_FIELD_M))
        return out

    def sources_reaching(self, win: tuple[int, int, int, int]) -> npt.NDArray[np.intp]:
        """Indices of the sources whose reach overlaps a window of the raster."""
        c0, r0, c1, r1 = win
        x0, x1 = self.x0 + c0 * self.cell_m, self.x0 + c1 * self.cell_m
        y0, y1 = self.y0 + r0 * self.cell_m, self.y0 + r1 * self.cell_m
        reach = self._reach
        near: npt.NDArray[np.intp] = np.flatnonzero(
            (self._sx + reach > x0) & (self._sx - reach < x1)
            & (self._sy + reach > y0) & (self._sy - reach < y1))
        return near

    # -- the sources -------------------------------------------------------------------------

    def set_sources(self, sources: Iterable[Source]) -> None:
        self.sources = list(sources)
        xy = [self.projection.xy(s.lat, s.lon) for s in self.sources]
        self._sx = np.array([p[0] for p in xy], dtype=np.float64)
        self._sy = np.array([p[1] for p in xy], dtype=np.float64)
        self._reach = np.array([self.reach_m(s.rated_db_c) for s in self.sources])
        self.on = np.zeros(len(self.sources), dtype=bool)
        self.best.fill(-np.inf)
        self.owner.fill(-1)

    def recompute(self, on: npt.NDArray[np.bool_]) -> None:
        """Everything from scratch, with the sources marked on."""
        self.best.fill(-np.inf)
        self.owner.fill(-1)
        self.on = on.copy()
        for index in np.flatnonzero(on):
            self._add(int(index))

    def switch(self, index: int, on: bool) -> None:
        """One source changes: only its window is recomputed."""
        if bool(self.on[index]) == on:
            return
        self.on[index] = on
        if on:
            self._add(index)
        else:
            self._remove(index)

    def _add(self, index: int) -> None:
        x, y = float(self._sx[index]), float(self._sy[index])
        win = self.window(x, y, float(self._reach[index]))
        c0, r0, c1, r1 = win
        if c0 >= c1 or r0 >= r1:
            return
        level = self.levels(x, y, self.sources[index].rated_db_c, win)
        best, owner = self.best[r0:r1, c0:c1], self.owner[r0:r1, c0:c1]
        louder = level > best
        best[louder] = level[louder]
        owner[louder] = index

    def _remove(self, index: int) -> None:
        x, y, reach = float(self._sx[index]), float(self._sy[index]), float(self._reach[index])
        c0, r0, c1, r1 = self.window(x, y, reach)
        if c0 >= c1 or r0 >= r1:
            return
        best, owner = self.best[r0:r1, c0:c1], self.owner[r0:r1, c0:c1]
        orphaned = owner == index
        if not orphaned.any():
            return
        best[orphaned] = -np.inf
        owner[orphaned] = -1
        # Only the cells it was loudest in change; their next loudest is among the sources on
        # whose reach overlaps its window.
        near = np.flatnonzero(self.on & (np.abs(self._sx - x) < reach + self._reach)
                              & (np.abs(self._sy - y) < reach + self._reach))
        for other in near:
            o = int(other)
            oc0, or0, oc1, or1 = self.window(float(self._sx[o]), float(self._sy[o]),
                                             float(self._reach[o]))
            ic0, ir0, ic1, ir1 = max(c0, oc0), max(r0, or0), min(c1, oc1), min(r1, or1)
            if ic0 >= ic1 or ir0 >= ir1:
                continue
            sub = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
            mask = orphaned[sub]
            if not mask.any():
                continue
            level = self.levels(float(self._sx[o]), float(self._sy[o]),
                                self.sources[o].rated_db_c, (ic0, ir0, ic1, ir1))
            sub_best, sub_owner = best[sub], owner[sub]
            louder = mask & (level > sub_best)
            sub_best[louder] = level[louder]
            sub_owner[louder] = o

    # -- results -----------------------------------------------------------------------------

    def covered(self) -> npt.NDArray[np.bool_]:
        result: npt.NDArray[np.bool_] = self.best >= self.threshold
        return result

    def covered_per_zone(self, covered: npt.NDArray[np.bool_] | None = None
                         ) -> npt.NDArray[np.int64]:
        mask = self.covered() if covered is None else covered
        counts: npt.NDArray[np.int64] = np.bincount(self.zone[mask & (self.zone >= 0)],
                                                    minlength=len(self.zones))
        return counts

    def gain(self, source: Source, zone_index: int | None = None) -> int:
        """Cells (of one zone, or of every zone) a new source would newly cover."""
        x, y = self.projection.xy(source.lat, source.lon)
        win = self.window(x, y, self.reach_m(source.rated_db_c))
        c0, r0, c1, r1 = win
        if c0 >= c1 or r0 >= r1:
            return 0
        level = self.levels(x, y, source.rated_db_c, win)
        threshold = self.threshold[r0:r1, c0:c1]
        newly = (level >= threshold) & (self.best[r0:r1, c0:c1] < threshold)
        if zone_index is not None:
            newly &= self.zone[r0:r1, c0:c1] == zone_index
        return int(np.count_nonzero(newly))

    def set_level(self, index: int, rated_db_c: float) -> None:
        """A source's rated level changes (what-if): switched off, re-rated, switched back."""
        was_on = bool(self.on[index])
        self.switch(index, False)
        old = self.sources[index]
        self.sources[index] = Source(old.id, old.lat, old.lon, rated_db_c)
        self._reach = self._reach.copy()  # a copy's arrays may be shared with the original
        self._reach[index] = self.reach_m(rated_db_c)
        if was_on:
            self.switch(index, True)

    def add_source(self, source: Source) -> int:
        """A source appended (on) for a what-if; returns its index."""
        self.sources.append(source)
        x, y = self.projection.xy(source.lat, source.lon)
        self._sx = np.append(self._sx, x)
        self._sy = np.append(self._sy, y)
        self._reach = np.append(self._reach, self.reach_m(source.rated_db_c))
        self.on = np.append(self.on, False)
        index = len(self.sources) - 1
        self.switch(index, True)
        return index

    def copy(self) -> CoverageGrid:
        """An independent copy of the sources and levels over the same (shared) raster."""
        twin = object.__new__(CoverageGrid)
        twin.__dict__.update(self.__dict__)
        twin.sources = list(self.sources)
        twin.on = self.on.copy()
        twin.best = self.best.copy()
        twin.owner = self.owner.copy()
        return twin

"""Audible coverage at district scale: a full recomputation and the update after one change.

    python -m bench.coverage                      # 5,000 sirens over 1,000 km2, 25 m cells
    python -m bench.coverage --sirens 1000 --km2 200

Sixteen square zones (mixed urban and suburban) tile a square of the given area; sirens of
110-128 dB(C) at 30 m stand at random inside it. Times: building the raster (once, at start),
the full recomputation, and switching one siren off and on again (the live path), as median
and worst of many. Memory: what the raster and the levels hold (tracemalloc, which numpy
reports to). Targets (issue 18): full under 2 s, incremental under 50 ms.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import tracemalloc

import numpy as np
from shapely.geometry import box

from siren_gateway.coverage.config import CoverageConfig, Source, ZoneArea
from siren_gateway.coverage.grid import CoverageGrid

LAT0, LON0 = 32.0, 118.7


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coverage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sirens", type=int, default=5000)
    parser.add_argument("--km2", type=float, default=1000.0)
    parser.add_argument("--cell-m", type=float, default=25.0)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args(argv)
    side_m = math.sqrt(args.km2) * 1000
    dlat = side_m / 110_574
    dlon = side_m / (111_320 * math.cos(math.radians(LAT0 + dlat / 2)))
    zones = []
    for i in range(4):
        for j in range(4):
            area = box(LON0 + j * dlon / 4, LAT0 + i * dlat / 4,
                       LON0 + (j + 1) * dlon / 4, LAT0 + (i + 1) * dlat / 4)
            zones.append(ZoneArea(f"z{i}{j}", area, "urban" if (i + j) % 3 == 0 else "suburban",
                                  70.0, 0.95))
    rng = random.Random(args.seed)
    sources = [Source(f"s{n}", LAT0 + rng.random() * dlat, LON0 + rng.random() * dlon,
                      rng.uniform(110, 128)) for n in range(args.sirens)]
    tracemalloc.start()
    started = time.perf_counter()
    grid = CoverageGrid(zones, CoverageConfig(cell_m=args.cell_m))
    grid.set_sources(sources)
    raster_s = time.perf_counter() - started
    on = np.ones(len(sources), dtype=bool)
    full: list[float] = []
    for _ in range(3):
        started = time.perf_counter()
        grid.recompute(on)
        full.append(time.perf_counter() - started)
    _, peak = tracemalloc.get_traced_memory()
    held = sum(a.nbytes for a in (grid.best, grid.owner, grid.zone, grid.threshold, grid.per_m))
    tracemalloc.stop()
    share = float(grid.covered_per_zone().sum()) / int(grid.cells_per_zone.sum())
    changes: list[float] = []
    for _ in range(args.changes):
        index = rng.randrange(len(sources))
        for state in (False, True):
            started = time.perf_counter()
            grid.switch(index, state)
            grid.covered_per_zone()  # the recount that follows every batch
            changes.append(time.perf_counter() - started)
    cells = grid.nx * grid.ny
    print(f"{args.sirens} sirens over {args.km2:g} km2 at {args.cell_m:g} m: {cells:,} cells, "
          f"{share:.1%} covered")
    print(f"raster built in {raster_s:.2f} s; arrays held {held / 2**20:.1f} MiB, "
          f"peak traced {peak / 2**20:.1f} MiB")
    print(f"full recomputation: median {statistics.median(full):.3f} s (of {len(full)})")
    print(f"one siren switched, with the recount: median {statistics.median(changes) * 1000:.2f}"
          f" ms, worst {max(changes) * 1000:.2f} ms (of {len(changes)})")
    print(f"RATIO full_vs_target_2s {statistics.median(full) / 2.0:.3f}")
    print(f"RATIO incremental_worst_vs_target_50ms {max(changes) / 0.050:.3f}")


if __name__ == "__main__":
    main()

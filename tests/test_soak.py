"""The suite's short run of bench/soak.py: a real gateway process under activations, a
schedule and random faults, its memory, tasks and descriptors sampled; flat or it fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulators.launcher import REPO_DIR


def test_short_soak_stays_flat(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench.soak", "--short", "--out", str(tmp_path)],
                         cwd=REPO_DIR, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["pass"] and summary["settled"] >= 6
    events = summary["events"]
    assert events.get("activation_201", 0) >= 4  # the day's work really happened
    assert sum(n for kind, n in events.items() if kind.startswith("fault_")) >= 20
    assert sum(n for kind, n in events.items() if kind.startswith("scheduled_")) >= 1
    png = Path(summary["png"])
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_the_verdict_judges_what_is_held_between_bursts_not_sampled_peaks() -> None:
    """A burst of tasks caught by samples in one half only is no leak, even when it covers
    most of that half; a floor that keeps rising is, and so is RSS growing past the limit."""
    from bench.soak import MiB, Sample, verdict

    def run(tasks: list[float], rss_mib: list[float]) -> tuple[bool, list[str]]:
        return verdict([Sample(30.0 * i, int(r * MiB), 1500, t, 0, 0, 0, 100)
                        for i, (t, r) in enumerate(zip(tasks, rss_mib, strict=True))],
                       warmup_s=0, max_growth=0.05, peak_tasks=3 * 100 + 256)

    flat = [100.0] * 20
    burst_late = [50.0] * 10 + [50.0, 400.0] + [50.0] * 8
    ok, lines = run(burst_late, flat)
    assert ok, lines
    # A second half mostly inside activations (a clean-clone short run: 46, 189, 73, 174,
    # 174 after 25, 26, 25, 25, 46) still has quiet moments, and they did not rise.
    busy_late = [25.0, 26.0, 25.0, 25.0, 46.0] * 2 + [46.0, 189.0, 73.0, 174.0, 174.0] * 2
    ok, lines = run(busy_late, flat)
    assert ok, lines
    leaking = [50.0 + 10 * i for i in range(20)]  # +190 over the run, between bursts too
    ok, lines = run(leaking, flat)
    assert not ok and "tasks" in next(line for line in lines if "GROWING" in line)
    runaway = [50.0] * 19 + [600.0]  # more than the largest activation can hold
    assert not run(runaway, flat)[0]
    ok, lines = run([50.0] * 20, [100.0] * 10 + [106.0] * 10)
    assert not ok and "+6.00 %" in lines[0]

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

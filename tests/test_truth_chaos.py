"""A short run of bench/truth_chaos.py: every result agrees with the simulators' onsets.

The bench drives a mixed Modbus + MQTT fleet of 50 sirens through activations of every class
under random communication faults, broker restarts and gateway SIGKILLs (see its docstring);
here with fewer activations than the recorded run, and with kills and restarts made likely.
"""

from __future__ import annotations

import json
import subprocess
import sys

from simulators.launcher import REPO_DIR


def test_truth_under_chaos_short_run() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.truth_chaos", "--sirens", "50", "--mqtt", "12",
         "--activations", "9", "--lanes", "3", "--kill-rate", "0.4", "--broker-rate", "0.4",
         "--seed", "2027"], cwd=REPO_DIR, capture_output=True, text=True, timeout=600,
        check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    summary = json.loads(next(line for line in reversed(run.stdout.splitlines())
                              if line.startswith("{")))
    assert summary["judged"] >= 50
    assert summary["extra_onsets"] == 0, run.stdout[-6000:]
    assert summary["violations"] == 0, run.stdout[-6000:]
    assert summary["agreement"] == 1.0, run.stdout[-6000:]

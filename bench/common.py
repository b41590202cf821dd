"""What every benchmark does the same way: CPU time of this process, running a child, the
gateway's side figures."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from siren_gateway.gateway import Gateway

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def gateway_figures(gateway: Gateway) -> dict[str, float]:
    """What a throughput run reports besides its rate: was the fleet online, was it stored,
    did a slow subscriber lose events."""
    return {"online": gateway.fleet.counts()["online"], "stored": gateway.telemetry.written,
            "bus_dropped": sum(v["dropped"] for v in gateway.bus.stats().values())}


def run_child(module: str, args: list[str]) -> dict[str, float]:
    """Run `python -m module args` (one side of a comparison, in its own process) and return
    the JSON object its last line prints."""
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args[:2])} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition into {'name{labels}': value} (enough for our own figures)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out

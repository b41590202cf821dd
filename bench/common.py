"""What every benchmark does the same way: CPU time of this process, running a child, the
gateway's side figures."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
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


def run_child_counted(module: str, args: list[str], warmup_s: float, duration_s: float
                      ) -> tuple[dict[str, float], int]:
    """Like run_child, under valgrind's callgrind: also the instructions the child executed
    in its measured window (from `warmup_s` for `duration_s` after it starts; the child's
    own window is the same). An instruction count does not depend on what else the machine
    is doing, so it shows changes of a few per cent that CPU time hides in its noise; it
    does not show cache misses, which CPU time does. The child runs ~50x slower: keep the
    load small enough for it to keep up (the poll rate it reports says whether it did)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
    if warmup_s < 20:
        raise SystemExit("--callgrind needs a warm-up of at least 20 s")
    out = Path(tempfile.mkdtemp(prefix="bench-callgrind-")) / "callgrind.out"
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-m", module, *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def control(*options: str) -> None:
        subprocess.run(["callgrind_control", *options, str(process.pid)], check=False,
                       capture_output=True)

    started = time.monotonic()

    def at(moment_s: float) -> None:
        time.sleep(max(0.0, started + moment_s - time.monotonic()))

    at(warmup_s - 15)  # instrumenting from here: the code is translated before the window
    control("--instr=on")
    at(warmup_s)
    control("--zero")
    at(warmup_s + duration_s)
    control("--dump")
    control("--instr=off")
    stdout, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{module} under callgrind failed (exit {process.returncode})")
    dumps = sorted(out.parent.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise SystemExit("callgrind wrote no dump for the window")
    found = re.search(r"^(?:summary|totals): (\d+)", dumps[-1].read_text(errors="replace"),
                      re.MULTILINE)
    shutil.rmtree(out.parent, ignore_errors=True)
    if found is None:
        raise SystemExit("no instruction total in the callgrind dump")
    result: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    return result, int(found.group(1))

"""Start simulator fleets in their own processes and stop exactly those processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed demo or test leaves no orphans."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own cleanup has to do


@dataclass
class FleetProcess:
    process: subprocess.Popen[str]
    control_url: str
    info: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def start_fleet(config: Path, control_port: int = 0, shard: tuple[int, int] = (1, 1),
                timeout_s: float = 120.0) -> FleetProcess:
    """Run `python -m simulators.fleet` and wait for its READY line."""
    command = [sys.executable, "-m", "simulators.fleet", "--config", str(config),
               "--control-port", str(control_port), "--shard", f"{shard[0]}/{shard[1]}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, cwd=REPO_DIR, stdout=subprocess.PIPE, text=True, env=env,
                               # only a prctl call runs between fork and exec, which is safe beside threads
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509
    assert process.stdout is not None
    ready: list[str] = []

    def read_ready() -> None:
        assert process.stdout is not None
        for line in process.stdout:  # keep draining after READY so the child never blocks
            if line.startswith("READY ") and not ready:
                ready.append(line[6:])

    reader = threading.Thread(target=read_ready, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not ready:
        if process.poll() is not None:
            raise RuntimeError(f"simulator fleet exited with code {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("simulator fleet did not become ready in time")
        time.sleep(0.05)
    info = json.loads(ready[0])
    return FleetProcess(process, info["control_url"], info)

"""The real processes that tests and benchmarks start, stop and kill: a gateway, a broker.

Both listen on loopback ports of their own, end with their parent (PR_SET_PDEATHSIG) and are
ended by their own PID only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulators.broker import mosquitto_binary
from simulators.launcher import REPO_DIR, FleetProcess, _die_with_parent, start_fleet
from simulators.sitegen import assign_free_ports, free_ports, write_site


class GatewayProcess:
    """`siren-gateway run --config FILE` in its own process; its log goes to `log_path`.

    `failpoints` (siren_gateway/runtime/failpoints.py) make it exit at a named point, for crash tests.
    """

    def __init__(self, config: Path, log_path: Path | None = None, scheme: str = "http",
                 failpoints: str = "", node_id: str | None = None,
                 database_url: str | None = None) -> None:
        self.config = config
        self.node_id = node_id  # a cluster node (docs/cluster.md)
        self.database_url = database_url
        self.port = free_ports(1)[0]
        self.log_path = log_path
        self.failpoints = failpoints
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, failpoints: str | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   SIREN_GATEWAY_FAILPOINTS=self.failpoints if failpoints is None else failpoints)
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "siren_gateway", "run", "--config", str(self.config),
             "--port", str(self.port), *(["--node-id", self.node_id] if self.node_id else []),
             *(["--database-url", self.database_url] if self.database_url else [])],
            cwd=REPO_DIR, stdout=log, stderr=log, env=env,
            preexec_fn=_die_with_parent)  # noqa: PLW1509
        if not isinstance(log, int):
            log.close()  # the child has its own copy

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would: no clean-up at all."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Mosquitto:
    """A mosquitto broker of our own on one fixed loopback port: stopped and started again
    (a broker restart) it comes back where its clients expect it."""

    def __init__(self, directory: Path) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian package mosquitto)")
        self.binary = binary
        self.port = free_ports(1)[0]
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             "persistence false\nset_tcp_nodelay true\n", encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)  # noqa: PLW1509
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_site(site: dict[str, Any], work: Path) -> tuple[FleetProcess, GatewayProcess]:
    """Simulators for a site dict (ports moved to free ones) and a gateway process for it,
    with the site file, database and gateway log in `work`."""
    assign_free_ports(site)
    path = write_site(site, work / "site.yaml", database=work / "gateway.db")
    fleet = start_fleet(path, control_port=0)
    gateway = GatewayProcess(path, log_path=work / "gateway.log")
    gateway.start()
    return fleet, gateway

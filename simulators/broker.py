"""An MQTT broker for the demo, so it needs nothing installed: mosquitto when present, else amqtt.

    python -m simulators.broker --port 18830     # amqtt on 127.0.0.1, prints READY when listening

amqtt is pure Python, MQTT 3.1.1 only and slow (a few thousand messages/s, measured), which is
plenty for a demo district; production sites point the gateway at a real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from simulators.launcher import REPO_DIR, _die_with_parent
from simulators.sitegen import free_ports

BrokerKind = Literal["auto", "mosquitto", "amqtt"]


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


@dataclass
class BrokerProcess:
    kind: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MQTT broker exited with code {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the MQTT broker did not start listening in time")


def start_broker(work: Path, kind: BrokerKind = "auto", extra_conf: str = "",
                 avoid: Collection[int] = ()) -> BrokerProcess:
    """Start a broker on a free loopback port, none of `avoid`, in its own process (ended
    with ours)."""
    port = free_ports(1, avoid=avoid)[0]
    binary = mosquitto_binary()
    preexec = _die_with_parent if sys.platform == "linux" else None
    if kind == "mosquitto" or (kind == "auto" and binary):
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "set_tcp_nodelay true\n" + extra_conf, encoding="utf-8")
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, preexec_fn=preexec)  # noqa: PLW1509
        used = "mosquitto"
    else:
        process = subprocess.Popen([sys.executable, "-m", "simulators.broker", "--port", str(port)],
                                   cwd=REPO_DIR, stdout=subprocess.DEVNULL,
                                   preexec_fn=preexec)  # noqa: PLW1509
        used = "amqtt"
    _wait_listening(process, port, 30.0)
    return BrokerProcess(used, port, process)


async def serve_amqtt(port: int) -> None:
    from amqtt.broker import Broker

    # amqtt's defaults listen on 0.0.0.0:1883 and load logging and $SYS plugins: override both.
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_amqtt(args.port))


if __name__ == "__main__":
    main()

"""One lifecycle: the gateway's parts start in order, stop in exact reverse order, and a start
that fails halfway stops everything that had started (no task or thread left behind)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from simulators.sitegen import generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.gateway import Gateway
from tests.conftest import wait_until


def _gateway(tmp_path: Path) -> Gateway:
    # Modbus and MQTT sirens, an Influx sink, a webhook and MQTT alerts: every kind of part.
    # Nothing listens on the addresses: parts start without their peers, as after a power cut.
    site = generate_site(6, mqtt_sirens=2, mqtt_broker={"host": "127.0.0.1", "port": 9})
    site["influx"] = {"url": "http://127.0.0.1:9"}
    site["alerts"] = {"webhooks": [{"url": "http://127.0.0.1:9/hook"}],
                      "mqtt": {"host": "127.0.0.1", "port": 9}}
    return Gateway(load_site(write_site(site, tmp_path / "site.yaml",
                                        database=tmp_path / "gateway.db")))


def _record(gateway: Gateway, events: list[tuple[str, str]]) -> list[str]:
    names = []
    for name, part in gateway.parts():
        names.append(name)

        def wrap(phase: str, real: Callable[[], Awaitable[None]],
                 name: str = name) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                events.append((name, phase))
                await real()
            return call

        part.start = wrap("start", part.start)  # type: ignore[method-assign,assignment]
        part.stop = wrap("stop", part.stop)  # type: ignore[method-assign,assignment]
    return names


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sqlite")]


async def _only_this_task_left() -> bool:
    await asyncio.sleep(0)
    return not (asyncio.all_tasks() - {asyncio.current_task()})


async def test_parts_stop_in_exact_reverse_order(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path)
    events: list[tuple[str, str]] = []
    names = _record(gateway, events)
    assert len(names) >= 14  # storage, telemetry, links, engines, notifiers, poller, scheduler
    await gateway.start()
    await gateway.stop()
    assert events == [(n, "start") for n in names] + [(n, "stop") for n in reversed(names)]
    await gateway.stop()  # a second stop is harmless
    assert len(events) == 2 * len(names)


@pytest.mark.parametrize("failing", [4, -1], ids=["fifth part", "last part"])
async def test_a_failed_start_stops_every_part_started_before_it(tmp_path: Path,
                                                                 failing: int) -> None:
    before = set(_our_threads())
    gateway = _gateway(tmp_path)
    events: list[tuple[str, str]] = []
    names = _record(gateway, events)
    name, part = gateway.parts()[failing]
    real_start = part.start

    async def fail() -> None:
        await real_start()  # it got some way (tasks, files) before failing
        raise OSError("injected: address already in use")

    part.start = fail  # type: ignore[method-assign]
    with pytest.raises(OSError, match="injected"):
        await gateway.start()
    index = names.index(name)
    started = names[:index + 1]
    assert [n for n, phase in events if phase == "start"] == started
    # The failing part is stopped too (it may have started something), then the rest in reverse.
    assert [n for n, phase in events if phase == "stop"] == list(reversed(started))
    await wait_until(_only_this_task_left, 5.0, "every task of the failed start to end")
    assert set(_our_threads()) <= before, "the database thread is still running"
    assert gateway.started_at is None
    await gateway.stop()  # nothing running: a no-op

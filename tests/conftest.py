"""Fixtures: simulated fleets in their own processes, gateways against them, over real sockets."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiohttp import web

from simulators.launcher import FleetProcess, start_fleet
from simulators.processes import GatewayProcess, Mosquitto

__all__ = ["Mosquitto"]  # tests import the broker from here
from simulators.sitegen import assign_free_ports, free_ports, write_site
from siren_gateway.alerts.model import Alert
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import Site
from siren_gateway.data import DEFAULT_PROFILES_DIR
from siren_gateway.gateway import Gateway
from siren_gateway.security.auth import hash_password

pytest_plugins = ["tests.browser", "tests.databases"]  # browser and database fixtures


def shanghai(text: str) -> float:
    """'2027-03-10 06:00' in the demo district's time zone, as a Unix time."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


def scripted_alert(alert_id: int, rule: str, siren: str, raised: str, cleared: str | None
                   ) -> Alert:
    """A stored alert of a scripted history (times as for `shanghai`)."""
    return Alert(alert_id, rule, siren, [], "major", rule, "cleared" if cleared else "active",
                 shanghai(raised), cleared_at=shanghai(cleared) if cleared else None)
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWORDS = {"viewer": "viewer-pass", "technician": "technician-pass",
             "operator": "operator-pass", "admin": "admin-pass"}
USERS = [{"username": name, "role": name, "password_hash": hash_password(password)}
         for name, password in PASSWORDS.items()]


def with_users(site: dict[str, Any], **activation: Any) -> dict[str, Any]:
    """A site dict with the test users and (optionally) activation settings."""
    site["users"] = USERS
    if activation:
        site["activation"] = activation
    return site


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can act on a failure
    (the dashboard tests save a screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


class SimControl:
    """Client for a simulator fleet's control API: the physical truth, and fault injection."""

    def __init__(self, fleet: FleetProcess) -> None:
        self.fleet = fleet
        self.http = httpx.AsyncClient(base_url=fleet.control_url, timeout=10)

    async def truth(self, siren_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/sirens/{siren_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def inject(self, siren_id: str, fault: str, *, active: bool = True,
                     **options: Any) -> None:
        response = await self.http.post(f"/sirens/{siren_id}/faults/{fault}",
                                        json={"active": active, **options})
        response.raise_for_status()

    async def set_battery(self, siren_id: str, volts: float) -> None:
        response = await self.http.post(f"/sirens/{siren_id}/battery", json={"voltage": volts})
        response.raise_for_status()

    async def set_clock(self, siren_id: str, offset_s: float, drift_ppm: float = 0.0) -> None:
        response = await self.http.post(f"/sirens/{siren_id}/clock",
                                        json={"offset_s": offset_s, "drift_ppm": drift_ppm})
        response.raise_for_status()

    async def requests(self) -> dict[str, int]:
        response = await self.http.get("/stats")
        response.raise_for_status()
        result: dict[str, int] = response.json()["requests"]
        return result


class SimulatedDistrict:
    def __init__(self, site_file: Path, fleet: FleetProcess) -> None:
        self.site_file = site_file
        self.fleet = fleet
        self.control = SimControl(fleet)

    def site(self) -> Site:
        return load_site(self.site_file)


class StartDistrict(Protocol):
    def __call__(self, site: dict[str, Any], profiles_dir: Path = ...) -> SimulatedDistrict: ...


# The longest tests start first, so that with several workers (`python3 dev.py test` runs
# pytest-xdist, one test handed out at a time) the run does not end on one of them alone.
LONGEST_FIRST = ("test_soak.py", "test_openapi_fuzz.py", "test_truth_chaos.py",
                 "test_schedule_e2e.py", "test_packaging.py", "test_security.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process leaves its log handler on the root logger, writing to
    a capture stream that is closed after the test: later tests' log lines would fail there."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def start_district(tmp_path: Path) -> Iterator[StartDistrict]:
    """Start a simulator process for a site dict (ports are moved to free ones)."""
    fleets: list[FleetProcess] = []

    def start(site: dict[str, Any], profiles_dir: Path = DEFAULT_PROFILES_DIR) -> SimulatedDistrict:
        assign_free_ports(site)
        path = write_site(site, tmp_path / f"site-{len(fleets)}.yaml",
                          database=tmp_path / f"gateway-{len(fleets)}.db", profiles_dir=profiles_dir)
        fleet = start_fleet(path, control_port=0)
        fleets.append(fleet)
        return SimulatedDistrict(path, fleet)

    yield start
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[[Site], Awaitable[Gateway]]]:
    """Start gateways in this test's event loop; all are stopped at the end."""
    started: list[Gateway] = []

    async def start(site: Site) -> Gateway:
        gateway = Gateway(site)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await stop_or_explain(gateway)


async def stop_or_explain(gateway: Gateway, timeout_s: float = 60.0) -> None:
    """Stop a gateway; one that does not stop fails the test with every task's stack, instead
    of hanging the run."""
    try:
        async with asyncio.timeout(timeout_s):
            await gateway.stop()
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        pytest.fail(f"the gateway did not stop within {timeout_s:g} s; tasks:\n"
                    f"{stacks.getvalue()[-20000:]}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


class LocalHttpServer:
    """An aiohttp server on a free loopback port, answering POSTs to `path` with `handler`."""

    def __init__(self, path: str, handler: Callable[[web.Request], Awaitable[web.Response]]
                 ) -> None:
        self.path, self.handler = path, handler
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self.handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float,
                     what: str, interval_s: float = 0.05) -> float:
    """Wait for a condition; return the seconds it took. Fails the test with `what` on timeout."""
    start = time.monotonic()
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"timed out after {timeout_s} s waiting for: {what}")
        await asyncio.sleep(interval_s)


async def logged_in(gateway: GatewayProcess, user: str = "operator") -> httpx.AsyncClient:
    """An HTTP client for a gateway process, logged in as a test user once its API is up."""
    http = httpx.AsyncClient(base_url=gateway.url, timeout=10)

    async def up() -> bool:
        try:
            response = await http.post("/api/auth/token", data={
                "username": user, "password": PASSWORDS[user]})
        except httpx.HTTPError:
            return False
        if response.status_code != 200:  # (a cluster without a leader for a moment: 502/503)
            return False
        http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        return True

    await wait_until(up, 30, "gateway API up")
    return http


class FakeClock:
    """Time that moves only when the test says; sleepers wake as it passes their moment."""

    def __init__(self, start: float) -> None:
        self.t = start
        self._start = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return 1000.0 + (self.t - self._start)

    async def sleep(self, seconds: float) -> None:
        target = self.t + max(0.0, seconds)
        while self.t < target:
            await self._moved.wait()

    async def advance(self, seconds: float, step: float = 0.5) -> None:
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + step)
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
            await asyncio.sleep(0.01)  # the scheduler's tasks and its database thread run

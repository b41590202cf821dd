"""Browser-test fixtures (a plugin of the suite, tests/conftest.py): the demo district served
over real sockets with its own tile server, Debian's Chromium driven by Playwright, and a page
that saves its screenshot and console when its test fails."""

from __future__ import annotations

import asyncio
import http.server
import io
import os
import shutil
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect

from simulators.sitegen import free_ports
from siren_gateway.api.app import create_app
from siren_gateway.data import DEMO_CONFIG
from siren_gateway.demo import demo_site
from siren_gateway.gateway import Gateway
from tests.conftest import Mosquitto, SimulatedDistrict, StartDistrict, wait_until
from tests.test_activation import StartGateway

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SG_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent
                                / "test-artifacts"))
DEMO_PASSWORDS = {"viewer": "viewer-demo", "technician": "technician-demo",
                  "operator": "operator-demo", "admin": "admin-demo"}
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                    reason="chromium not installed (.ci/run installs it)")


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour with a darker grid line at its edges (a tile one can see)."""
    rows = []
    for y in range(height):
        row = bytearray([0])  # filter: none
        for x in range(width):
            edge = x == 0 or y == 0
            row += bytes(c // 2 if edge else c for c in rgb)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


class TileServer:
    """A control room's own tile server, on loopback: every tile the same picture; it keeps the
    paths it was asked for."""

    def __init__(self) -> None:
        self.requested: list[str] = []
        tile = solid_png(256, 256, (214, 226, 205))
        requested = self.requested

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requested.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(tile)))
                self.end_headers()
                self.wfile.write(tile)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_ports(1)[0]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}/tiles/{{z}}/{{x}}/{{y}}.png"

    def __enter__(self) -> TileServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def tiles() -> Iterator[TileServer]:
    with TileServer() as server:
        yield server


class Served:
    def __init__(self, district: SimulatedDistrict, gateway: Gateway, url: str,
                 server: uvicorn.Server, tiles: TileServer) -> None:
        self.district, self.gateway, self.url, self.server = district, gateway, url, server
        self.tiles = tiles


@pytest.fixture
async def served(broker: Mosquitto, start_district: StartDistrict, gateways: StartGateway,
                 tiles: TileServer) -> AsyncIterator[Served]:
    site: dict[str, Any] = demo_site(None, DEMO_CONFIG)
    site["mqtt"] = dict(site["mqtt"]) | {"port": broker.port}
    site["map"] = {"tile_url": tiles.url, "attribution": "test tiles", "max_zoom": 18}
    site["schedules"] = []  # nothing sounds on its own during a test
    site["maintenance"] = dict(site["maintenance"]) | {"settle_s": 1.0}
    district = start_district(site)
    gateway = await gateways(district.site())
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(gateway, manage_lifecycle=False),
                                           host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    serving = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, 10, "dashboard server up")
    await wait_until(lambda: gateway.fleet.counts()["online"] == 20, 20, "all 20 sirens online")
    yield Served(district, gateway, f"http://127.0.0.1:{port}", server, tiles)
    server.should_exit = True
    try:
        async with asyncio.timeout(30):
            await serving
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        pytest.fail(f"the dashboard server did not stop; tasks:\n{stacks.getvalue()[-20000:]}")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # (an alarm sound may start without a click: a wall display is not clicked on)
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    opened = await browser.new_page(viewport={"width": 1500, "height": 1100})
    console: list[str] = []
    opened.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    opened.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        # (Playwright makes the folder)
        await opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        print("browser console:\n" + "\n".join(console[-50:]))
    await opened.close()


async def log_in(page: Page, served: Served, user: str) -> None:
    await page.goto(served.url)
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", DEMO_PASSWORDS[user])
    await page.click("#login-form button")
    await expect(page.locator("#sirens tbody tr")).to_have_count(20)
    await expect(page.locator("#stream")).to_have_class("stream live")



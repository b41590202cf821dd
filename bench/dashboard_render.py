"""Dashboard responsiveness with a large district, in headless Chromium (Debian's, Playwright).

    python -m bench.dashboard_render --sirens 1000 --duration 30

Runs a simulated district (Modbus, in simulator processes), the gateway and its web server in
this process, and the dashboard in Chromium. While faults are injected into the simulators
(one every half second, so the stream carries events), it reports: time to first render of all
sirens after navigation, renders per second sustained, the cost of one render (mean and worst),
stream events received, and how long a click takes to open a siren's detail view. The demo's
defaults (1,000 sirens polled every 5 s) are what it measures against.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from playwright.async_api import async_playwright

from simulators.launcher import start_fleet
from simulators.sitegen import assign_free_ports, free_ports, generate_site, write_site
from siren_gateway.api.app import create_app
from siren_gateway.config.loading import load_site
from siren_gateway.gateway import Gateway
from siren_gateway.security.auth import hash_password

FAULTS = ["door_open", "mains_loss", "overheat"]


async def run(sirens: int, duration_s: float, processes: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    site = assign_free_ports(generate_site(sirens, poll_interval_s=5.0))
    site["users"] = [{"username": "viewer", "role": "viewer",
                      "password_hash": hash_password("viewer-bench")}]
    config = write_site(site, work / "site.yaml", database=work / "bench.db")
    fleets = [start_fleet(config, 0, (i + 1, processes)) for i in range(processes)]
    control = [httpx.AsyncClient(base_url=f.control_url, timeout=10) for f in fleets]
    gateway = Gateway(load_site(config))
    await gateway.start()
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(gateway, manage_lifecycle=False),
                                           host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(240):  # up to 2 minutes for every siren's first answer
            if gateway.fleet.counts()["online"] >= sirens:
                break
            await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            token = (await http.post("/api/auth/token", data={
                "username": "viewer", "password": "viewer-bench"})).json()["access_token"]
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--no-sandbox"])
            # (its probes are scripts evaluated in the page, which the page's content policy
            # refuses, rightly, to anything but the bench)
            context = await browser.new_context(viewport={"width": 1500, "height": 1100},
                                                bypass_csp=True)
            page = await context.new_page()
            await page.add_init_script(
                f"sessionStorage.setItem('sg-token', '{token}');"
                "sessionStorage.setItem('sg-role', 'viewer');"
                "sessionStorage.setItem('sg-user', 'viewer');")
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function(
                f"document.querySelectorAll('#sirens tbody tr').length === {sirens}",
                timeout=60_000)
            first = await page.evaluate("window.__sg.firstRenderMs")
            before = await page.evaluate("({...window.__sg})")
            started = time.monotonic()
            rng = random.Random(1)
            ids = [s["id"] for s in site["sirens"]]
            while time.monotonic() - started < duration_s:
                siren = rng.choice(ids)
                # each simulator process holds the sirens of its shard of endpoints
                for client in control:
                    response = await client.post(f"/sirens/{siren}/faults/{rng.choice(FAULTS)}",
                                                 json={"active": rng.random() < 0.7})
                    if response.status_code == 200:
                        break
                await asyncio.sleep(0.5)
            after = await page.evaluate("({...window.__sg})")
            elapsed = time.monotonic() - started
            clicks = []
            for siren in rng.sample(ids, 5):
                t0 = time.monotonic()
                await page.evaluate(
                    f"document.querySelector('#sirens a[data-detail=\"{siren}\"]').click()")
                await page.wait_for_function(
                    f"document.querySelector('#detail-title').textContent.startsWith('{siren} ')")
                clicks.append(time.monotonic() - t0)
            await browser.close()
        renders = after["renders"] - before["renders"]
        return {"first_render_ms": first, "renders_per_s": renders / elapsed,
                "render_ms_mean": (after["renderMsTotal"] - before["renderMsTotal"])
                / max(renders, 1), "render_ms_max": after["renderMsMax"],
                "stream_events_per_s": (after["streamEvents"] - before["streamEvents"])
                / elapsed, "detail_click_ms": 1000 * max(clicks)}
    finally:
        server.should_exit = True
        await serving
        await gateway.stop()
        for client in control:
            await client.aclose()
        for fleet in fleets:
            fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sirens", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--sim-processes", type=int, default=2)
    args = parser.parse_args()
    r = asyncio.run(run(args.sirens, args.duration, args.sim_processes))
    print(f"{args.sirens} sirens, {args.duration:.0f} s with a fault injected every 0.5 s")
    print(f"  time to first render of all sirens: {r['first_render_ms']:.0f} ms after navigation")
    print(f"  renders sustained: {r['renders_per_s']:.2f}/s, each {r['render_ms_mean']:.1f} ms "
          f"on average, {r['render_ms_max']:.1f} ms at worst")
    print(f"  stream events received: {r['stream_events_per_s']:.1f}/s; detail view opens in "
          f"{r['detail_click_ms']:.0f} ms at worst (5 clicks)")


if __name__ == "__main__":
    main()

"""The control-room screen in a real headless Chromium against the demo district: the map (the
site's own tile server, zone outlines, every siren with its state icon), the wall display, times
in the site's zone, the attention a new serious alert gets, keyboard-only use, an accessibility
scan of both pages, and screenshots of both pages in both languages (test-artifacts/screenshots).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.browser import ARTIFACTS, DEMO_PASSWORDS, Served, log_in, needs_chromium
from tests.conftest import wait_until

pytestmark = needs_chromium
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
SHOTS = ARTIFACTS / "screenshots"
WEEKDAYS_ZH = ["周一", "周二", "周三", "周四", "周五", "周六", "周日"]


async def wall_login(page: Page, served: Served, user: str = "viewer") -> None:
    await page.goto(f"{served.url}/wall")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", DEMO_PASSWORDS[user])
    await page.click("#login-form button")
    await expect(page.locator("#map .siren-marker")).to_have_count(20)
    await expect(page.locator("#stream")).to_have_class("stream live")


async def summary(served: Served) -> dict[str, Any]:
    """The fleet summary from the served API, as the demo's viewer."""
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        token = (await http.post("/api/auth/token", data={
            "username": "viewer", "password": DEMO_PASSWORDS["viewer"]})).json()["access_token"]
        response = await http.get("/api/fleet/summary",
                                  headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


async def test_the_map_draws_the_sites_tiles_zones_and_every_siren_with_its_icon(
        page: Page, served: Served) -> None:
    await log_in(page, served, "viewer")
    # The site's own tile server (configured per site; served here by the test) is asked and
    # its tiles drawn.
    await expect(page.locator("#map img.leaflet-tile-loaded").first).to_be_visible()
    assert any(path.startswith("/tiles/") and path.endswith(".png")
               for path in served.tiles.requested)
    # Zone outlines with their names, a scale bar, every siren with its state's icon and label.
    zones = [z for z in served.gateway.site.config.zones if z.area]
    await expect(page.locator("#map path.zone-outline")).to_have_count(len(zones))
    for zone in zones:
        await expect(page.locator(f'#map path.zone-outline[data-zone="{zone.id}"]')
                     ).to_have_count(1)
    await expect(page.locator(".leaflet-tooltip.zone-label")).to_have_count(len(zones))
    await expect(page.locator(".leaflet-control-scale-line")).to_be_visible()
    truth = {s["id"]: s["status_class"] for s in served.gateway.fleet.public()}
    for siren_id, cls in truth.items():
        marker = page.locator(f'#map .siren-marker[data-id="{siren_id}"]')
        await expect(marker).to_have_attribute("data-class", cls)
        await expect(marker.locator(f"svg.shape.s-{cls}")).to_have_count(1)
    await expect(page.locator(".leaflet-tooltip.siren-label")).to_have_count(20)
    # Shape as well as colour: the inhibited siren's icon is not the healthy one's.
    assert "inhibited" in truth.values()
    healthy = await page.locator("#map svg.s-healthy").first.inner_html()
    inhibited = await page.locator("#map svg.s-inhibited").first.inner_html()
    assert healthy != inhibited


async def test_the_wall_display_matches_the_api_and_follows_a_fault_within_2_s(
        page: Page, served: Served) -> None:
    await wall_login(page, served)
    before = await summary(served)
    await expect(page.locator("#f-faults")).to_have_text(str(before["with_faults"]))
    await expect(page.locator("#f-offline")).to_have_text(str(before["offline"]))
    await expect(page.locator("#f-sounding")).to_have_text(str(before["sounding"]))
    await expect(page.locator("#f-ready")).to_have_text(f"{before['ready_share'] * 100:.1f}%")
    await expect(page.locator("#f-ready-count")).to_have_text(
        f"{before['ready']} / {before['total']}")
    # An MQTT siren reports a change at once: once the API has it, the wall shows it in 2 s.
    await served.district.control.inject("hs-01", "mains_loss")

    async def api_changed() -> bool:
        return bool((await summary(served))["with_faults"] == before["with_faults"] + 1)

    await wait_until(api_changed, 10, "the API counts the fault", 0.05)
    await expect(page.locator("#f-faults")).to_have_text(str(before["with_faults"] + 1),
                                                         timeout=2000)
    await expect(page.locator('#map .siren-marker[data-id="hs-01"]')).to_have_attribute(
        "data-class", "fault")
    # The countdown to the next test, in local time (the demo's schedules are off here).
    await expect(page.locator("#f-next")).not_to_be_empty()


async def test_the_wall_survives_a_network_blip_and_says_so(page: Page, served: Served
                                                            ) -> None:
    await wall_login(page, served)
    await expect(page.locator("#blip")).to_be_hidden()
    # The browser loses the network: its next refresh fails, and the screen says so.
    await page.context.set_offline(True)
    await expect(page.locator("#blip")).to_be_visible(timeout=15_000)
    await expect(page.locator("#f-faults")).not_to_have_text("—")  # the last figures stay up
    await page.context.set_offline(False)
    await expect(page.locator("#blip")).to_be_hidden(timeout=20_000)
    await expect(page.locator("#stream")).to_have_class("stream live", timeout=20_000)


async def test_a_new_critical_alert_sounds_and_flashes_until_acknowledged(
        page: Page, served: Served) -> None:
    await log_in(page, served, "operator")
    sound = "document.querySelector('#alert-sound')"
    assert await page.evaluate(f"{sound}.paused")
    await served.district.control.inject("xwm-01", "amplifier_fault", amplifier=2)
    row = page.locator('#alerts li[data-rule="amplifier_fault"][data-siren="xwm-01"]')
    await expect(row).to_have_class("sev-critical state-active flash", timeout=15_000)
    await expect(page.locator("#header")).to_have_class("alarm")
    await wait_until(lambda: page.evaluate(f"!{sound}.paused && {sound}.currentTime > 0"), 10,
                     "the alarm sound playing")
    assert await page.title() == f"({await page.locator('#alerts li.state-active').count()})" \
        " 警报器网关"
    # Muted in this browser: silent, but the row still flashes.
    await page.click("#mute")
    await wait_until(lambda: page.evaluate(f"{sound}.paused"), 5, "muted")
    await expect(row).to_have_class("sev-critical state-active flash")
    await page.click("#mute")
    await wait_until(lambda: page.evaluate(f"!{sound}.paused"), 5, "sounding again")
    # Acknowledged: quiet, and no more flashing. (The fault also took the zone's coverage
    # below target: a major alert raised after the page opened, which sounds too.)
    await row.locator("input").fill("技术员已出发")
    await row.locator("button").click()
    await expect(row).to_have_class("sev-critical state-acknowledged")
    for other in await page.locator("#alerts li.flash").all():
        await other.locator("input").fill("已知")
        await other.locator("button").click()
    await expect(page.locator("#alerts li.flash")).to_have_count(0)
    await wait_until(lambda: page.evaluate(f"{sound}.paused"), 5, "quiet once acknowledged")
    await expect(page.locator("#header")).not_to_have_class("alarm")


def local_text(iso: str, zone: str) -> str:
    moment = datetime.fromisoformat(iso).astimezone(ZoneInfo(zone))
    return f"{moment:%Y-%m-%d %H:%M} ({WEEKDAYS_ZH[moment.weekday()]})"


async def test_times_show_in_the_sites_zone_with_utc_on_hover(page: Page, served: Served
                                                              ) -> None:
    await log_in(page, served, "viewer")
    await served.district.control.inject("xwm-02", "door_open")
    row = page.locator('#alerts li[data-rule="door_open"][data-siren="xwm-02"]')
    await expect(row).to_be_visible(timeout=15_000)
    alert = next(a for a in served.gateway.alerts.query() if a["rule"] == "door_open")
    zone = served.gateway.site.config.site.timezone
    shown = row.locator("time")
    await expect(shown).to_contain_text(local_text(alert["raised_at"], zone))
    await expect(shown).to_contain_text("前")  # relative: "… 秒前"
    utc = datetime.fromisoformat(alert["raised_at"]).strftime("%Y-%m-%dT%H:%M:%S")
    assert utc in (await shown.get_attribute("title") or "")
    await page.click("#lang")
    moment = datetime.fromisoformat(alert["raised_at"]).astimezone(ZoneInfo(zone))
    await expect(shown).to_contain_text(f"{moment:%a} {moment.day} {moment:%b %Y %H:%M}")


async def test_the_activation_controls_are_reached_by_keyboard_alone(page: Page,
                                                                     served: Served) -> None:
    await page.goto(served.url)
    await page.focus("input[name=username]")
    await page.keyboard.type("operator")
    await page.keyboard.press("Tab")
    await page.keyboard.type(DEMO_PASSWORDS["operator"])
    await page.keyboard.press("Enter")
    await expect(page.locator("#sirens tbody tr")).to_have_count(20)
    for _ in range(400):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement && document.activeElement.id") == \
                "preview":
            break
    else:
        pytest.fail("Tab never reached the activation form's Preview button")
    await page.keyboard.press("Enter")
    await expect(page.locator("#preview-box")).to_be_visible()
    await expect(page.locator("#preview-list li[data-preview]")).to_have_count(19)


@pytest.fixture
async def scanning(browser: Browser) -> AsyncIterator[BrowserContext]:
    # axe-core is injected as a script, which the pages' content policy rightly refuses.
    context = await browser.new_context(bypass_csp=True, viewport={"width": 1500, "height": 1100})
    yield context
    await context.close()


async def axe_problems(page: Page) -> list[str]:
    await page.add_script_tag(content=await asyncio.to_thread(AXE.read_text, "utf-8"))
    result = await page.evaluate("""async () => {
        const r = await axe.run(document);
        return { passes: r.passes.length, all: r.violations.map(v => `${v.impact} ${v.id}`),
          serious: r.violations.filter(v => ["serious", "critical"].includes(v.impact))
            .map(v => `${v.impact} ${v.id}: ${v.help} (${v.nodes.length}): `
                      + v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(" | ")) };
    }""")
    print(f"axe on {page.url}: {result['passes']} rules passed; violations: {result['all']}")
    assert result["passes"] >= 20  # the scan really ran over the page
    return list(result["serious"])


async def test_both_pages_pass_an_accessibility_scan(scanning: BrowserContext,
                                                     served: Served) -> None:
    page = await scanning.new_page()
    await log_in(page, served, "operator")
    await expect(page.locator("#map .siren-marker")).to_have_count(20)
    problems = await axe_problems(page)
    await page.click("#lang")
    problems += await axe_problems(page)
    wall = await scanning.new_page()
    await wall_login(wall, served)
    problems += await axe_problems(wall)
    assert not problems, "\n".join(problems)


async def test_screenshots_of_both_pages_in_both_languages(page: Page, served: Served) -> None:
    """Saved for people to look at (README); each page drawn fully before its picture."""
    await served.district.control.inject("xwm-02", "door_open")
    await served.district.control.inject("hs-02", "mains_loss")
    await wait_until(lambda: sum(1 for s in served.gateway.fleet.public() if s["faults"]) >= 2,
                     15, "two sirens with faults")
    for lang in ("zh", "en"):
        await page.goto(served.url)
        await page.evaluate(f"localStorage.setItem('sg-lang', '{lang}')")
        await log_in(page, served, "operator")
        await expect(page.locator("#map img.leaflet-tile-loaded").first).to_be_visible()
        await page.screenshot(path=str(SHOTS / f"operator-{lang}.png"), full_page=True)
        await page.click("#logout")
        await wall_login(page, served)
        await expect(page.locator("#f-faults")).not_to_have_text("—")
        await page.screenshot(path=str(SHOTS / f"wall-{lang}.png"))
        await page.evaluate("sessionStorage.clear()")

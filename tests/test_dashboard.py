"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against the demo
district: simulators, an MQTT broker, the gateway and its API served over real sockets.

Each test saves a screenshot to test-artifacts/ when it fails.
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

from playwright.async_api import Page, expect

from siren_gateway.security.auth import Principal, Role
from tests.browser import ARTIFACTS, Served, log_in, needs_chromium
from tests.conftest import wait_until

pytestmark = needs_chromium


async def test_every_siren_shows_with_its_true_state(page: Page, served: Served) -> None:
    await log_in(page, served, "viewer")
    await expect(page.locator("#map .siren-marker")).to_have_count(20)
    truth = {t["siren_id"]: t for t in (await served.district.control.http.get("/sirens")).json()}
    assert len(truth) == 20
    inhibited = {s.id for s in served.gateway.site.config.sirens if s.inhibited}
    for siren_id in truth:
        expected = "inhibited" if siren_id in inhibited else "healthy"
        await expect(page.locator(f'#sirens tr[data-id="{siren_id}"]')).to_have_attribute(
            "data-class", expected)
        await expect(page.locator(f'#map .siren-marker[data-id="{siren_id}"]')).to_have_attribute(
            "data-class", expected)
    # MQTT and Modbus sirens alike; sorted by id, and a click on the header reverses it.
    order = "rows => rows.map(r => r.dataset.id)"
    assert await page.locator("#sirens tbody tr").evaluate_all(order) == sorted(truth)
    await page.click('button[data-sort="id"]')
    assert await page.locator("#sirens tbody tr").evaluate_all(order) == sorted(truth,
                                                                                reverse=True)
    # The detail view draws its charts from the stored history.
    await page.click('#sirens a[data-detail="xwm-01"]')
    await expect(page.locator("#detail-title")).to_contain_text("xwm-01")
    await expect(page.locator("#detail-body")).to_contain_text("battery_voltage")


async def test_an_injected_fault_shows_on_the_map_and_as_an_alert(page: Page,
                                                                  served: Served) -> None:
    await log_in(page, served, "viewer")
    await served.district.control.inject("xwm-01", "amplifier_fault", amplifier=2)
    await served.district.control.inject("hs-01", "mains_loss")  # an MQTT siren
    for siren_id, rule in (("xwm-01", "amplifier_fault"), ("hs-01", "mains_lost")):
        await expect(page.locator(f'#map .siren-marker[data-id="{siren_id}"]')
                     ).to_have_attribute("data-class", "fault", timeout=10_000)
        await expect(page.locator(f'#alerts li[data-rule="{rule}"][data-siren="{siren_id}"]')
                     ).to_be_visible(timeout=10_000)
    # A viewer sees the alert but no acknowledge control.
    await expect(page.locator("#alerts form.ack")).to_have_count(0)


async def test_an_operator_runs_a_test_and_reads_the_report(page: Page, served: Served) -> None:
    await log_in(page, served, "operator")
    await page.select_option("#signal", "growl_test")
    await page.select_option("#klass", "test")
    await page.click("#preview")
    await expect(page.locator("#preview-list li[data-preview]")).to_have_count(19)  # 1 inhibited
    await page.click("#send")
    await expect(page.locator("#progress-list li")).to_have_count(20)
    await expect(page.locator("#progress [data-report]")).to_be_visible(timeout=30_000)
    statuses = await page.locator("#progress-list li").evaluate_all(
        "items => Object.fromEntries(items.map(i => [i.dataset.result, i.dataset.status]))")
    truth = {t["siren_id"]: t for t in (await served.district.control.http.get("/sirens")).json()}
    sounded_truly = {sid for sid, t in truth.items() if t["onsets"]}
    assert {sid for sid, s in statuses.items() if s == "sounded"} == sounded_truly
    assert len(sounded_truly) == 19 and list(statuses.values()).count("excluded") == 1
    await expect(page.locator("#progress [data-report]")).to_contain_text("100.0 %")
    # And the operator may acknowledge an alert with a comment.
    await served.district.control.inject("xwm-02", "door_open")
    form = page.locator('#alerts li[data-rule="door_open"] form.ack')
    await expect(form).to_be_visible(timeout=10_000)
    await form.locator("input").fill("技术员已到场")
    await form.locator("button").click()
    await expect(page.locator('#alerts li[data-rule="door_open"]')).to_contain_text("技术员已到场")


async def test_a_viewer_cannot_activate(page: Page, served: Served) -> None:
    await log_in(page, served, "viewer")
    await expect(page.locator("#activation-card")).to_be_hidden()
    await expect(page.locator("#sirens input[data-select]")).to_have_count(0)


async def test_an_emergency_needs_the_confirmation_step(page: Page, served: Served) -> None:
    await log_in(page, served, "operator")
    await page.check('input[name=target][value="zones"]')
    await page.check('input[name=zone][value="xuanwumen"]')
    await page.select_option("#signal", "air_raid")
    await page.select_option("#klass", "emergency")
    await page.click("#preview")
    await expect(page.locator("#emergency-confirm")).to_be_visible()
    await expect(page.locator("#send")).to_be_disabled()
    await page.locator("#send").click(force=True)  # even a forced click sends nothing
    await asyncio.sleep(1.0)
    assert not served.gateway.activations.activations
    await page.check("#emergency-ack")
    await expect(page.locator("#send")).to_be_enabled()
    await page.click("#send")
    await expect(page.locator("#progress-list li")).to_have_count(3)
    (activation,) = served.gateway.activations.activations.values()
    assert activation.klass == "emergency" and activation.requested_by == "operator"


async def test_the_language_switch_changes_the_labels(page: Page, served: Served) -> None:
    await log_in(page, served, "viewer")
    header = page.locator('button[data-sort="id"]')
    await expect(header).to_have_text("编号")
    await expect(page.locator("#stream")).to_have_text("实时")
    await page.click("#lang")
    await expect(header).to_have_text("id")
    await expect(page.locator("#stream")).to_have_text("live")
    await expect(page.locator('#sirens tr[data-id="xwm-01"] .badge')).to_have_text("healthy")
    await page.click("#lang")
    await expect(page.locator('#sirens tr[data-id="xwm-01"] .badge')).to_have_text("正常")


async def test_the_stream_indicator_shows_a_lost_stream(page: Page, served: Served) -> None:
    await log_in(page, served, "viewer")
    served.server.should_exit = True  # the gateway's web server goes away under the page
    await expect(page.locator("#stream")).to_have_class("stream lost", timeout=15_000)
    await expect(page.locator("#stream")).to_have_text("实时连接中断")


async def test_an_operator_resets_a_latched_fault_from_the_siren_detail(
        page: Page, served: Served) -> None:
    control = served.district.control
    await control.inject("xwm-02", "amplifier_fault", amplifier=1)
    state = served.gateway.fleet.states["xwm-02"]
    await wait_until(lambda: "amplifier_fault" in state.faults, 10, "fault latched")
    await control.inject("xwm-02", "amplifier_fault", amplifier=1, active=False)  # repaired
    await log_in(page, served, "operator")
    await page.click('#sirens a[data-detail="xwm-02"]')
    form = page.locator("#siren-command")
    await expect(form).to_be_visible()
    await form.locator("select[name=command]").select_option("reset_faults")
    await form.locator("input[name=comment]").fill("amplifier 1 replaced")
    await form.locator("button").click()
    await expect(page.locator("#command-result")).to_have_attribute("data-result", "confirmed",
                                                                    timeout=20_000)
    assert "amplifier_fault" not in state.faults
    entries = await served.gateway.audit.entries(action="sirens.reset_faults", limit=1)
    assert entries and entries[0]["details"]["comment"] == "amplifier 1 replaced"


async def test_a_viewer_has_no_siren_commands(page: Page, served: Served) -> None:
    await log_in(page, served, "viewer")
    await page.click('#sirens a[data-detail="xwm-01"]')
    await expect(page.locator("#detail-title")).to_contain_text("xwm-01")
    await expect(page.locator("#siren-command")).to_be_hidden()


async def test_the_coverage_layer_follows_a_silenced_siren_and_the_what_if_tool(
        page: Page, served: Served) -> None:
    await log_in(page, served, "operator")
    await expect(page.locator("#coverage-card")).to_be_visible()
    await expect(page.locator("#coverage-image")).to_have_count(1)
    zones = [z.id for z in served.gateway.site.config.zones]
    await expect(page.locator("#map path.zone-outline")).to_have_count(
        sum(1 for z in served.gateway.site.config.zones if z.area))
    for zone in zones:
        await expect(page.locator(f'#coverage-zones tr[data-zone="{zone}"]')).to_be_visible()
    row = page.locator('#coverage-zones tr[data-zone="xuanwumen"] td[data-share]')
    before = float(await row.get_attribute("data-share") or "nan")
    image_before = await page.locator("#coverage-image").get_attribute("src")
    # An amplifier fault silences xwm-01: its part of the zone is lost, on the map and in figures.
    await served.district.control.inject("xwm-01", "amplifier_fault", amplifier=1)
    await expect(row).not_to_have_attribute("data-share", str(before), timeout=10_000)
    after = float(await row.get_attribute("data-share") or "nan")
    assert after < before
    assert after == next(z["covered_share"] for z in served.gateway.coverage.summary()["zones"]
                         if z["zone"] == "xuanwumen")
    assert await page.locator("#coverage-image").get_attribute("src") != image_before
    assert "3" in served.gateway.coverage.layer()["cells"]
    # What if a siren stood where xwm-01 stands? Click there: the zone is whole again.
    box = await page.locator('#map .siren-marker[data-id="xwm-01"]').bounding_box()
    assert box is not None
    await page.click("#whatif-add")
    await page.mouse.click(box["x"] + box["width"] / 2 + 2, box["y"] + box["height"] / 2 + 2)
    await expect(page.locator("#map path.candidate")).to_have_count(1)
    result = page.locator('#whatif-result b[data-whatif="district"]')
    await expect(result).to_contain_text("→", timeout=10_000)
    now, would_be = (float(v.strip(" %")) for v in (await result.inner_text()).split("→"))
    assert would_be > now
    await page.screenshot(path=str(ARTIFACTS / "coverage-what-if.png"), full_page=True)
    await page.click("#whatif-clear")
    await expect(page.locator("#map path.candidate")).to_have_count(0)


async def test_a_technician_completes_an_inspection_and_takes_an_order_to_verified(
        page: Page, served: Served) -> None:
    """The maintenance view: a round of inspections, one completed with its checklist; an order
    opened by hand, taken, worked and resolved, then verified by the siren itself; the siren's
    asset record and timeline in its detail; the labels in both languages."""
    gateway = served.gateway
    await gateway.inspections.run_now(Principal("operator", Role.OPERATOR), "pre-flood")
    await log_in(page, served, "technician")
    await expect(page.locator("#activation-card")).to_be_hidden()  # it sounds nothing
    await expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(20)
    await expect(page.locator('#task-counts [data-task-count="open"] b')).to_have_text("20")

    await page.locator('#tasks tr[data-siren="xwm-02"] button[data-complete]').click()
    await page.select_option('select[name="result:earthing_lightning"]', "fault")
    await page.fill('input[name="note:earthing_lightning"]', "接地扁铁锈蚀")
    await page.fill('#task-form textarea[name="notes"]', "其余正常")
    await page.click('#task-form button:not([type="button"])')
    await expect(page.locator("#task-result")).to_contain_text("xwm-02")
    await expect(page.locator("#tasks tbody tr[data-task]")).to_have_count(19)
    done = gateway.inspections.query(siren_id="xwm-02")[0]
    assert (done["state"], done["completed_by"], done["notes"]) == ("done", "technician", "其余正常")
    assert done["results"]["earthing_lightning"] == {"result": "fault", "note": "接地扁铁锈蚀"}
    assert done["results"]["mounting"]["result"] == "ok"
    assert done["evidence"]["reachability"] in ("online", "stale")

    await page.select_option("#order-siren", "xwm-03")
    await page.fill('#order-new input[name="cause"]', "柜门锁损坏")
    await page.click("#order-new button")
    await wait_until(lambda: bool(gateway.work_orders.query(siren_id="xwm-03")), 10, "opened")
    order_id = gateway.work_orders.query(siren_id="xwm-03")[0]["id"]
    row = page.locator(f'#orders tr[data-order="{order_id}"]')
    await expect(row).to_have_attribute("data-state", "open")
    await row.locator("button[data-take]").click()
    await expect(row).to_have_attribute("data-state", "assigned")
    for step in ("in_progress", "resolved"):
        await row.locator("select[data-move]").select_option(step)
        await row.locator("input[data-note]").fill(f"{step}: 已更换门锁")
        await row.locator("button[data-apply]").click()
        if step == "in_progress":
            await expect(row).to_have_attribute("data-state", step)
    # Only the siren verifies: its status stays healthy for the settling time.
    await expect(row).to_have_attribute("data-state", "verified", timeout=20_000)
    await expect(page.locator('#order-counts [data-order-count="verified"] b')).to_have_text("1")
    order = gateway.work_orders.query(siren_id="xwm-03")[0]
    assert [h.get("to") for h in order["history"] if "to" in h][-3:] == [
        "in_progress", "resolved", "verified"]
    assert order["assignee"] == "technician"

    # The month's report: a printable page (styled by the gateway's own sheet) and a CSV.
    async with page.expect_popup() as opened:
        await page.click("#report-html")
    report = await opened.value
    await expect(report.locator("tbody tr")).to_have_count(21)  # each siren, then the total
    border = await report.locator("td").first.evaluate(
        "cell => getComputedStyle(cell).borderTopStyle")
    assert border == "solid"
    async with page.expect_download() as downloading:
        await page.click("#report-csv")
    saved = Path(await (await downloading.value).path())
    table = list(csv.reader(io.StringIO(await asyncio.to_thread(saved.read_text, "utf-8"))))
    header, total = table[0], table[-1]
    assert total[0] == "TOTAL" and len(table) == 22
    assert total[header.index("repaired")] == "1" and total[header.index("orders_open")] == "0"

    # The siren's detail: its asset record (the site file's) and its timeline.
    await page.click('#sirens a[data-detail="xwm-01"]')
    await expect(page.locator('#detail-maint [data-asset="serial_number"]')).to_have_text(
        "SG-2019-0417")
    await expect(page.locator('#detail-maint [data-asset="firmware"]')).to_have_text("SG-2.4.1")
    await page.click('#sirens a[data-detail="xwm-03"]')
    await expect(page.locator('#timeline li[data-kind="work_order"]').first).to_be_visible()
    # Both languages.
    await page.evaluate("localStorage.setItem('sg-lang', 'zh')")
    await page.reload()
    await expect(page.locator('#maintenance-card h2')).to_have_text("维护管理")
    await expect(row.locator(".chip")).to_have_text("已验证")
    await page.click("#lang")
    await expect(page.locator('#maintenance-card h2')).to_have_text("Maintenance")
    await expect(row.locator(".chip")).to_have_text("verified")
    await page.screenshot(path=str(ARTIFACTS / "maintenance-view.png"), full_page=True)

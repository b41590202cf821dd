"""Scheduled soundings in real time against simulated sirens: SIGKILL at every moment, reports.

The gateway runs as a real process (`siren-gateway run`) and is killed with SIGKILL just before,
during and just after an occurrence, then started again. The simulators' physical truth (every
onset of sound) says whether any step sounded twice or not at all.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from simulators.processes import GatewayProcess
from simulators.sitegen import generate_site
from siren_gateway.gateway import Gateway
from tests.conftest import StartDistrict, logged_in, wait_until, with_users
from tests.test_activation import Api, StartGateway

SHANGHAI = ZoneInfo("Asia/Shanghai")
PREPARE_S = 3.0  # sync_lead_s 2 + 1: activations are made this long before a step's start


def plan_at(start: float, offsets: list[float], grace_s: float = 30.0) -> dict[str, Any]:
    """A yearly plan whose occurrence today is at `start` (a whole second), local Shanghai time."""
    local = datetime.fromtimestamp(start, SHANGHAI)
    return {"id": "e2e", "name": "End-to-end test", "timezone": "Asia/Shanghai", "class": "test",
            "recurrence": {"type": "yearly", "month": local.month, "day": local.day,
                           "time": local.strftime("%H:%M:%S")},
            "steps": [{"offset_s": o, "signal": "growl_test"} for o in offsets],
            "grace_s": grace_s}


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


@pytest.mark.parametrize("kill_at", ["before", "during", "after"])
async def test_sigkill_never_fires_an_occurrence_twice_or_loses_it(
        kill_at: str, start_district: StartDistrict, tmp_path: Path) -> None:
    # (a wide late-start allowance: a restart on a loaded machine may take seconds, and past
    # the allowance a step's sirens are truthfully "failed", not sounded late)
    site = with_users(generate_site(3, poll_interval_s=0.5, timeout_s=0.5),
                      sync_lead_s=2.0, confirm_timeout_s=8.0, duplicate_window_s=0,
                      delivery_grace_s=30.0)
    start = math.ceil(time.time()) + 14
    site["schedules"] = [plan_at(start, [0, 9])]
    district = start_district(site)
    gateway = GatewayProcess(district.site_file)
    gateway.start()
    http = await logged_in(gateway, "viewer")
    moment = {"before": start - PREPARE_S - 1.5,  # the occurrence is not claimed yet
              "during": start + 2.0,  # step 0 sounding, step 1 not yet created
              "after": start + 9 - PREPARE_S + 1.5}[kill_at]  # both steps created
    try:
        await sleep_until(moment)
        gateway.kill()
        await http.aclose()
        gateway.start()  # at once: as a supervisor (systemd) would
        http = await logged_in(gateway, "viewer")

        async def done() -> bool:
            rows = (await http.get("/api/schedules/e2e/occurrences")).json()
            return bool(rows) and rows[0]["state"] == "done"

        await wait_until(done, 60, "occurrence done after the restart")
        occurrence = (await http.get("/api/schedules/e2e/occurrences")).json()[0]
        assert [s.get("error") for s in occurrence["steps"]] == [None, None], occurrence
        report = (await http.get(f"/api/reports/{occurrence['id']}")).json()
    finally:
        await http.aclose()
        gateway.stop()
    # The truth: every siren sounded each of the two steps exactly once.
    for siren_id in ("s00001", "s00002", "s00003"):
        truth = await district.control.truth(siren_id)
        assert [o["signal"] for o in truth["onsets"]] == ["growl_test", "growl_test"], (
            kill_at, siren_id, truth["onsets"], occurrence)
    assert report["commanded"] == 3
    if kill_at != "during":
        # (killed mid-step, step 0's sirens are confirmed by watching only, which may end in
        # "no feedback" if the restart took longer than the confirmation window)
        assert report["counts"]["sounded"] == 3, report


async def test_real_time_plan_reports_the_truth_and_its_precision(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(generate_site(5, poll_interval_s=0.5, timeout_s=0.3),
                      sync_lead_s=2.0, confirm_timeout_s=6.0, delivery_grace_s=1.0)
    site["sirens"][4]["inhibited"] = True
    start = math.ceil(time.time()) + 8
    site["schedules"] = [plan_at(start, [0])]
    district = start_district(site)
    control = district.control
    await control.inject("s00002", "all_amplifiers_fault")  # commanded, but silent: failed
    await control.inject("s00003", "no_response")  # never hears the command: no feedback
    gateway: Gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] >= 3, 10, "online")
    api = await Api(gateway).login("viewer")
    try:
        async def done() -> bool:
            rows = (await api.get("/api/schedules/e2e/occurrences")).json()
            return bool(rows) and rows[0]["state"] == "done"

        await wait_until(done, 30, "occurrence done")
        occurrence = (await api.get("/api/schedules/e2e/occurrences")).json()[0]
        report = (await api.get(f"/api/reports/{occurrence['id']}")).json()
        csv_response = await api.get(f"/api/reports/{occurrence['id']}.csv")
    finally:
        await api.http.aclose()
    results = {s["siren_id"]: s["result"] for s in report["sirens"]}
    assert results == {"s00001": "sounded", "s00002": "failed", "s00003": "no_feedback",
                       "s00004": "sounded", "s00005": "excluded"}
    truths = {sid: await control.truth(sid) for sid in results}
    sounded_truly = {sid for sid, t in truths.items() if t["onsets"]}
    assert sounded_truly == {sid for sid, r in results.items() if r == "sounded"}
    assert report["counts"]["sounded"] == 2 and report["commanded"] == 4
    assert report["sounding_rate"] == 0.5
    assert report["zones"]["zone-2"]["sounding_rate"] == 0.0  # s00002
    rows = list(csv.reader(io.StringIO(csv_response.text.lstrip("\ufeff"))))
    assert rows[0][:4] == ["occurrence", "plan", "scheduled_local", "siren_id"]
    assert {r[3]: r[6] for r in rows[1:]} == results
    assert csv_response.headers["content-type"].startswith("text/csv")

    # Precision: the step was due to be sent at start - PREPARE_S; how late did it leave?
    activation = gateway.activations.activations[max(gateway.activations.activations)]
    planned, created = activation.start_at, activation.created_at
    sent = [r.sent_at for r in activation.results.values() if r.sent_at]
    onsets = [truths[s]["onsets"][0]["started_at"] for s in ("s00001", "s00004")]
    print(f"\nSCHEDULE PRECISION: activation created {1000 * (created - (planned - PREPARE_S)):.1f}"
          f" ms after its planned moment; commands left {1000 * (min(sent) - (planned - PREPARE_S)):.1f}"
          f"..{1000 * (max(sent) - (planned - PREPARE_S)):.1f} ms after it; sirens started "
          f"{', '.join(f'{1000 * (o - planned):+.1f}' for o in onsets)} ms from the scheduled second")


async def test_a_siren_busy_at_the_scheduled_moment_is_left_out_not_the_whole_test(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    """A 2,000-siren scheduled test used to be refused whole (409) when one siren was still
    sounding someone's test: the soak's every-minute activations stopped every scheduled test
    of an hour. A scheduled step now sounds every siren it can and reports the busy one."""
    site = with_users(generate_site(4, poll_interval_s=0.5, timeout_s=0.3),
                      sync_lead_s=2.0, confirm_timeout_s=6.0)
    start = math.ceil(time.time()) + 10
    site["schedules"] = [plan_at(start, [0])]
    district = start_district(site)
    gateway: Gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "online")
    api = await Api(gateway).login("operator")
    try:
        exercise = await api.post("/api/activations", {
            "targets": {"sirens": ["s00002"]}, "class": "exercise", "signal": "air_raid"})
        assert exercise.status_code == 201, exercise.text
        busy_id = exercise.json()["id"]
        assert time.time() < start - PREPARE_S, "the machine was too slow to set the test up"

        async def done() -> bool:
            rows = (await api.get("/api/schedules/e2e/occurrences")).json()
            return bool(rows) and rows[0]["state"] == "done"

        await wait_until(done, 40, "occurrence done")
        occurrence = (await api.get("/api/schedules/e2e/occurrences")).json()[0]
        assert [s.get("error") for s in occurrence["steps"]] == [None], occurrence
        report = (await api.get(f"/api/reports/{occurrence['id']}")).json()
        assert (await api.post(f"/api/activations/{busy_id}/cancel")).status_code == 200
    finally:
        await api.http.aclose()
    results = {s["siren_id"]: s["result"] for s in report["sirens"]}
    assert results == {"s00001": "sounded", "s00002": "excluded", "s00003": "sounded",
                       "s00004": "sounded"}, report
    step = gateway.activations.activations[occurrence["steps"][0]["activation_id"]]
    assert step.results["s00002"].reason == (f"busy with exercise activation {busy_id}; "
                                             "not commanded")
    onsets = [o["signal"] for o in (await district.control.truth("s00002"))["onsets"]]
    assert onsets == ["air_raid"]  # the exercise went on, untouched by the test

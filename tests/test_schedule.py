"""Recurrences across DST and year ends; the scheduler's exactly-once rules on an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from simulators.sitegen import generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.config.plans import PlanConfig, YearlyRule, compile_rule
from siren_gateway.errors import Refused
from siren_gateway.live.bus import Bus, ScheduleEvent
from siren_gateway.scheduling.engine import Scheduler
from siren_gateway.scheduling.recurrence import Cron, occurrences
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal, Role
from siren_gateway.store.sqlite import SqliteStore
from tests.conftest import FakeClock, wait_until

BERLIN, SHANGHAI = ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Shanghai")
ADMIN = Principal("admin", Role.ADMIN)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
        ) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def upcoming(rule: dict[str, Any], zone: ZoneInfo, after: datetime, count: int) -> list[str]:
    plan = PlanConfig.model_validate({"id": "p", "name": "p", "timezone": zone.key,
                                      "recurrence": rule, "steps": [{"offset_s": 0,
                                                                     "signal": "growl_test"}]})
    out = []
    for _, instant in occurrences(compile_rule(plan.recurrence), zone, after):
        out.append(instant.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if len(out) == count:
            return out
    return out


# -- recurrences ---------------------------------------------------------------------------------

def test_nine_eighteen_in_shanghai_across_year_ends() -> None:
    rule = {"type": "yearly", "month": 9, "day": 18, "time": "10:00"}
    assert upcoming(rule, SHANGHAI, utc(2026, 11, 28), 3) == [
        "2027-09-18T02:00:00Z", "2028-09-18T02:00:00Z", "2029-09-18T02:00:00Z"]
    # On the day, a moment after: the next is a year on.
    assert upcoming(rule, SHANGHAI, utc(2027, 9, 18, 2, 0, 1), 1) == ["2028-09-18T02:00:00Z"]
    # New Year's Eve, late evening Berlin time, lands in the next UTC day only in winter time.
    eve = {"type": "yearly", "month": 12, "day": 31, "time": "23:30"}
    assert upcoming(eve, BERLIN, utc(2026, 12, 31, 22, 31), 2) == [
        "2027-12-31T22:30:00Z", "2028-12-31T22:30:00Z"]


def test_berlin_keeps_local_time_across_dst() -> None:
    # First Saturday of the month at 12:00 local: 11:00 UTC in winter, 10:00 UTC in summer.
    rule = {"type": "monthly", "weekday": "sat", "nth": 1, "time": "12:00"}
    assert upcoming(rule, BERLIN, utc(2027, 2, 1), 3) == [
        "2027-02-06T11:00:00Z", "2027-03-06T11:00:00Z", "2027-04-03T10:00:00Z"]


def test_a_time_that_does_not_exist_or_exists_twice() -> None:
    # 02:30 on Sundays: on 28 March 2027 clocks jump from 02:00 to 03:00 (02:30 -> 03:30 CEST);
    # on 31 October 2027 02:30 happens twice (the first, CEST, is taken). Never skipped, never
    # twice.
    rule = {"type": "cron", "expression": "30 2 * * sun"}
    march = upcoming(rule, BERLIN, utc(2027, 3, 20), 3)
    assert march == ["2027-03-21T01:30:00Z", "2027-03-28T01:30:00Z", "2027-04-04T00:30:00Z"]
    october = upcoming(rule, BERLIN, utc(2027, 10, 23), 3)
    assert october == ["2027-10-24T00:30:00Z", "2027-10-31T00:30:00Z", "2027-11-07T01:30:00Z"]
    # Every 30 minutes through the spring-forward night: 02:00 and 02:30 do not exist and fall on
    # the same instants as 03:00 and 03:30; each instant once.
    night = upcoming({"type": "cron", "expression": "*/30 1-3 28 3 *"}, BERLIN,
                     utc(2027, 3, 27), 5)
    # 01:00 and 01:30 CET; 02:00=03:00 and 02:30=03:30 CEST; then a year on (already summer time)
    assert night == ["2027-03-28T00:00:00Z", "2027-03-28T00:30:00Z", "2027-03-28T01:00:00Z",
                     "2027-03-28T01:30:00Z", "2028-03-27T23:00:00Z"]


def test_leap_days_and_last_weekdays() -> None:
    leap = {"type": "yearly", "month": 2, "day": 29, "time": "10:00"}
    assert upcoming(leap, SHANGHAI, utc(2026, 11, 28), 2) == [
        "2028-02-29T02:00:00Z", "2032-02-29T02:00:00Z"]
    last_friday = {"type": "monthly", "weekday": "fri", "nth": -1, "time": "09:00"}
    assert upcoming(last_friday, SHANGHAI, utc(2028, 1, 1), 3) == [
        "2028-01-28T01:00:00Z", "2028-02-25T01:00:00Z", "2028-03-31T01:00:00Z"]
    fifth_tuesday = {"type": "monthly", "weekday": "tue", "nth": 5, "time": "09:00"}
    assert upcoming(fifth_tuesday, SHANGHAI, utc(2027, 1, 1), 2) == [
        "2027-03-30T01:00:00Z", "2027-06-29T01:00:00Z"]


@pytest.mark.parametrize("expression", ["* * *", "61 * * * *", "0 0 0 * *", "0 0 * 13 *",
                                        "0 0 * * funday", "*/0 * * * *"])
def test_bad_cron_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        Cron.parse(expression)


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match=r"day is out of range"):
        YearlyRule(type="yearly", month=2, day=30, time="10:00")
    base: dict[str, Any] = {"id": "p", "name": "p", "recurrence": {
        "type": "yearly", "month": 9, "day": 18, "time": "10:00"},
        "steps": [{"offset_s": 0, "signal": "air_raid"}]}
    with pytest.raises(ValueError, match="unknown time zone"):
        PlanConfig.model_validate(base | {"timezone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="step offsets"):
        PlanConfig.model_validate(base | {"steps": [{"offset_s": 5, "signal": "air_raid"}]})
    with pytest.raises(ValueError, match="names a signal"):
        PlanConfig.model_validate(base | {"steps": [{"offset_s": 0}]})


# -- the scheduler on an injected clock --------------------------------------------------------

class RecordingExecutor:
    """Stands in for the activation engine: records what would have sounded, and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.started: list[dict[str, Any]] = []
        self.refuse: str | None = None

    async def start(self, plan: PlanConfig, occurrence_id: int, step: int, start_at: float,
                    tag: str) -> int:
        from siren_gateway.scheduling.model import StepRefused
        if self.refuse:
            raise StepRefused(self.refuse)
        self.started.append({"occurrence": occurrence_id, "step": step, "start_at": start_at,
                             "tag": tag, "created": self.clock.now()})
        return len(self.started)

    async def find(self, tag: str) -> int | None:
        return next((i + 1 for i, s in enumerate(self.started) if s["tag"] == tag), None)

    async def finished(self, activation_ids: list[int]) -> bool:
        return True

    async def cancel(self, activation_ids: list[int]) -> None:
        return None

    async def reports(self, activation_ids: list[int]) -> dict[int, dict[str, Any]]:
        return {}


T0 = datetime(2027, 9, 18, 1, 59, 0, tzinfo=UTC).timestamp()  # a minute before 10:00 Shanghai
NINE_EIGHTEEN = {"id": "nine-eighteen", "name": "九·一八 防空警报试鸣", "timezone": "Asia/Shanghai",
                 "recurrence": {"type": "yearly", "month": 9, "day": 18, "time": "10:00"},
                 "class": "exercise",
                 "steps": [{"offset_s": 0, "signal": "preliminary"},
                           {"offset_s": 480, "signal": "air_raid"},
                           {"offset_s": 960, "signal": "all_clear"}],
                 "notice_lead_s": [432000, 600], "grace_s": 300}


class Harness:
    def __init__(self, tmp_path: Path, plans: list[dict[str, Any]], start: float = T0) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        site = generate_site(3)
        site["schedules"] = plans
        self.site = load_site(write_site(site, tmp_path / "site.yaml"))
        self.store = SqliteStore(tmp_path / "schedule.db")
        self.db = self.store.database
        self.bus = Bus()
        self.events = self.bus.subscribe("test", maxsize=1000, kinds=(ScheduleEvent,))
        self.clock = FakeClock(start)
        self.executor = RecordingExecutor(self.clock)
        self.scheduler: Scheduler | None = None

    async def start(self) -> Scheduler:
        if self.db._conn is None:
            await self.db.start()
        self.scheduler = Scheduler(self.site.config.schedules, self.site.config.sirens,
                                   self.store, self.bus, AuditLog(self.store), self.executor,
                                   prepare_s=3.0, clock=self.clock)
        await self.scheduler.start()
        await asyncio.sleep(0.05)
        return self.scheduler

    async def restart(self) -> Scheduler:
        """A crash: the scheduler object is gone, only the database (and activations) remain."""
        assert self.scheduler is not None
        await self.scheduler.stop()
        return await self.start()

    def drained(self) -> list[ScheduleEvent]:
        out = []
        while not self.events.queue.empty():
            event = self.events.queue.get_nowait()
            assert isinstance(event, ScheduleEvent)
            out.append(event)
        return out


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(plans: list[dict[str, Any]], start: float = T0) -> Harness:
        made.append(Harness(tmp_path / f"h{len(made)}", plans, start))
        return made[-1]

    yield make
    for h in made:
        if h.scheduler is not None:
            await h.scheduler.stop()
        if h.db._conn is not None:
            await h.db.stop()


async def occurrence_states(scheduler: Scheduler) -> list[tuple[str, str]]:
    return [(o["scheduled_local"], o["state"]) for o in await scheduler.occurrences()]


async def test_fires_each_step_once_on_time(harness: Callable[..., Harness]) -> None:
    h = harness([NINE_EIGHTEEN])
    scheduler = await h.start()
    await h.clock.advance(60 - 3 - 0.5)  # half a second before the prepare moment
    assert h.executor.started == []
    await h.clock.advance(1.0)
    await wait_until(lambda: len(h.executor.started) == 1, 2, "first step")
    first = h.executor.started[0]
    assert first["start_at"] == datetime(2027, 9, 18, 2, 0, tzinfo=UTC).timestamp()
    assert first["created"] - (first["start_at"] - 3.0) <= 0.5  # created at its moment
    await h.clock.advance(960 + 5, step=2.0)
    await wait_until(lambda: len(h.executor.started) == 3, 2, "all steps")
    assert [s["start_at"] - first["start_at"] for s in h.executor.started] == [0, 480, 960]
    await wait_until(lambda: True, 0.2, "settle")
    states = await occurrence_states(scheduler)
    assert states[0] == ("2027-09-18T10:00:00+08:00", "done")
    assert states[1] == ("2028-09-18T10:00:00+08:00", "scheduled")  # the next one is on disk


async def test_restart_mid_occurrence_never_fires_a_step_twice(
        harness: Callable[..., Harness]) -> None:
    h = harness([NINE_EIGHTEEN])
    await h.start()
    await h.clock.advance(62)
    await wait_until(lambda: len(h.executor.started) == 1, 2, "first step")
    await h.restart()  # crash between the first and second step
    await h.clock.advance(100)
    assert len(h.executor.started) == 1  # not again
    await h.clock.advance(900, step=2.0)
    await wait_until(lambda: len(h.executor.started) == 3, 2, "remaining steps")
    assert [s["step"] for s in h.executor.started] == [0, 1, 2]
    # A crash right after a step's activation was created, before the occurrence recorded it:
    # the tag on the activation finds it, nothing is created twice.
    h2 = harness([NINE_EIGHTEEN])
    scheduler = await h2.start()
    await h2.clock.advance(62)
    await wait_until(lambda: len(h2.executor.started) == 1, 2, "first step")

    def forget_steps(conn: Any) -> None:
        with conn.transaction():
            conn.execute("UPDATE schedule_occurrences SET steps = '{}'")

    await scheduler.stop()
    await h2.db.run(forget_steps)
    await h2.start()
    await h2.clock.advance(1000, step=2.0)
    await wait_until(lambda: len(h2.executor.started) == 3, 2, "remaining steps")
    assert [s["step"] for s in h2.executor.started] == [0, 1, 2]


async def test_late_start_within_grace_fires_late_past_it_is_missed(
        harness: Callable[..., Harness]) -> None:
    # The gateway was down at 10:00 and comes back 2 minutes late: within the 5-minute grace,
    # the whole sequence moves.
    late = harness([NINE_EIGHTEEN])
    scheduler = await late.start()
    await scheduler.stop()
    late.clock.t = T0 + 60 + 120
    await late.start()
    await late.clock.advance(5)
    await wait_until(lambda: len(late.executor.started) == 1, 2, "fired late")
    planned = datetime(2027, 9, 18, 2, 0, tzinfo=UTC).timestamp()
    assert 120 < late.executor.started[0]["start_at"] - planned < 130
    # Back 10 minutes late: missed, an event says so, nothing sounds, the next is scheduled.
    gone = harness([NINE_EIGHTEEN])
    scheduler = await gone.start()
    await scheduler.stop()
    gone.clock.t = T0 + 60 + 600
    scheduler = await gone.start()
    await gone.clock.advance(5)
    await asyncio.sleep(0.1)
    assert gone.executor.started == []
    states = await occurrence_states(scheduler)
    assert [s for _, s in states] == ["missed", "scheduled"]
    missed = [e for e in gone.drained() if e.kind == "missed"]
    assert len(missed) == 1 and "grace" in missed[0].message


async def test_exclusions_skip_and_notices_come_at_their_lead_times(
        harness: Callable[..., Harness]) -> None:
    plan = NINE_EIGHTEEN | {"exclusions": ["2027-09-18"]}
    h = harness([plan], start=T0 - 7 * 86400)
    scheduler = await h.start()
    states = await occurrence_states(scheduler)
    assert states == [("2027-09-18T10:00:00+08:00", "skipped"),
                      ("2028-09-18T10:00:00+08:00", "scheduled")]
    # Notices for 2028: five days and ten minutes before.
    n = harness([NINE_EIGHTEEN], start=datetime(2028, 9, 13, 1, 59, tzinfo=UTC).timestamp())
    await n.start()
    await n.clock.advance(120)
    notices = [e for e in n.drained() if e.kind == "notice"]
    assert [e.lead_s for e in notices] == [432000]
    assert notices[0].scheduled_at == datetime(2028, 9, 18, 2, 0, tzinfo=UTC)
    n.clock.t = datetime(2028, 9, 18, 1, 49, 50, tzinfo=UTC).timestamp()
    await n.clock.advance(20)
    await wait_until(lambda: any(e.kind == "notice" and e.lead_s == 600 for e in n.drained()),
                     2, "ten-minute notice")


async def test_skip_run_now_and_edit(harness: Callable[..., Harness]) -> None:
    h = harness([], start=T0)
    scheduler = await h.start()
    monthly = {"id": "monthly-silent", "name": "Monthly silent test", "timezone": "Asia/Shanghai",
               "recurrence": {"type": "monthly", "weekday": "wed", "nth": 1, "time": "10:00"},
               "steps": [{"offset_s": 0, "action": "silent_test"}]}
    await scheduler.save_plan(ADMIN, PlanConfig.model_validate(monthly), create=True)
    upcoming_ones = scheduler.preview("monthly-silent", 3)
    assert [o["scheduled_local"] for o in upcoming_ones] == [
        "2027-10-06T10:00:00+08:00", "2027-11-03T10:00:00+08:00", "2027-12-01T10:00:00+08:00"]
    # Skip the second one, which is not on disk yet, by its start time.
    skipped = await scheduler.skip(ADMIN, "monthly-silent", upcoming_ones[1]["scheduled_at"])
    assert skipped["state"] == "skipped"
    occ = await scheduler.run_now(ADMIN, "monthly-silent")
    await h.clock.advance(1)
    await wait_until(lambda: len(h.executor.started) == 1, 2, "run now")
    assert h.executor.started[0]["occurrence"] == occ["id"]
    # Changing the plan moves its coming occurrence.
    await scheduler.save_plan(ADMIN, PlanConfig.model_validate(
        monthly | {"recurrence": {"type": "monthly", "weekday": "thu", "nth": 1,
                                  "time": "10:00"}}), create=False)
    await h.clock.advance(1)
    await asyncio.sleep(0.1)
    pending = [o for o in await scheduler.occurrences("monthly-silent")
               if o["state"] == "scheduled"]
    assert [o["scheduled_local"] for o in pending] == ["2027-10-07T10:00:00+08:00"]


async def test_cancelling_a_running_occurrence_stops_its_remaining_steps(
        harness: Callable[..., Harness]) -> None:
    h = harness([NINE_EIGHTEEN])
    scheduler = await h.start()
    await h.clock.advance(62)
    await wait_until(lambda: len(h.executor.started) == 1, 2, "first step")
    running = [o for o in await scheduler.occurrences() if o["state"] == "running"]
    cancelled = await scheduler.skip(ADMIN, "nine-eighteen", str(running[0]["id"]))
    assert cancelled["state"] == "cancelled"
    await h.clock.advance(1000, step=2.0)
    assert len(h.executor.started) == 1  # the air raid and all-clear steps never came
    assert [e.kind for e in h.drained() if e.kind == "cancelled"] == ["cancelled"]
    # A cancelled occurrence cannot be skipped again.
    with pytest.raises(Refused):
        await scheduler.skip(ADMIN, "nine-eighteen", str(running[0]["id"]))

"""Test plans: recurrence in local time, steps, targets; and the plan's own cross-checks."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import ConfigDict, Field, model_validator

from siren_gateway.config.common import (
    MAX_LIST,
    ConfigProblem,
    Identifier,
    StrictModel,
    TimeZoneName,
)
from siren_gateway.config.signals import SignalConfig
from siren_gateway.scheduling.recurrence import (
    WEEKDAYS,
    Cron,
    MonthlyNthWeekday,
    Rule,
    Yearly,
    parse_time_of_day,
)


class PlanTargets(StrictModel):
    sirens: list[Identifier] = Field(default=[], max_length=MAX_LIST)
    zones: list[Identifier] = Field(default=[], max_length=1000)
    all: bool = False

    @model_validator(mode="after")
    def _some(self) -> PlanTargets:
        if not (self.all or self.sirens or self.zones):
            raise ValueError("name sirens, zones or all: true")
        return self


class YearlyRule(StrictModel):
    type: Literal["yearly"]
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    time: str = Field(max_length=16)

    @model_validator(mode="after")
    def _check(self) -> YearlyRule:
        date(2024, self.month, self.day)  # a leap year: 29 February is allowed (leap years only)
        parse_time_of_day(self.time)
        return self


class MonthlyRule(StrictModel):
    type: Literal["monthly"]
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    nth: Literal[1, 2, 3, 4, 5, -1]  # -1: the last one of the month
    time: str = Field(max_length=16)

    @model_validator(mode="after")
    def _check(self) -> MonthlyRule:
        parse_time_of_day(self.time)
        return self


class CronRule(StrictModel):
    type: Literal["cron"]
    expression: str = Field(max_length=200)

    @model_validator(mode="after")
    def _check(self) -> CronRule:
        Cron.parse(self.expression)
        return self


RecurrenceConfig = Annotated[YearlyRule | MonthlyRule | CronRule, Field(discriminator="type")]


def compile_rule(rule: YearlyRule | MonthlyRule | CronRule) -> Rule:
    if isinstance(rule, YearlyRule):
        return Yearly(rule.month, rule.day, parse_time_of_day(rule.time))
    if isinstance(rule, MonthlyRule):
        return MonthlyNthWeekday(WEEKDAYS.index(rule.weekday), rule.nth,
                                 parse_time_of_day(rule.time))
    return Cron.parse(rule.expression)


class PlanStep(StrictModel):
    offset_s: float = Field(ge=0, le=6 * 3600)  # from the occurrence's start
    action: Literal["sound", "silent_test"] = "sound"
    signal: Identifier | None = None

    @model_validator(mode="after")
    def _check(self) -> PlanStep:
        if (self.action == "sound") != (self.signal is not None):
            raise ValueError("a sound step names a signal; a silent test does not")
        return self


class PlanConfig(StrictModel):
    """A recurring test sounding: when (local time in a named zone), what, on which sirens."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    name_zh: str | None = Field(default=None, max_length=200)
    timezone: TimeZoneName = "Asia/Shanghai"
    recurrence: RecurrenceConfig
    steps: list[PlanStep] = Field(min_length=1, max_length=20)
    klass: Literal["exercise", "test"] = Field(default="test", alias="class")
    targets: PlanTargets = PlanTargets(all=True)
    # local dates on which the plan does not sound (holidays)
    exclusions: list[date] = Field(default=[], max_length=1000)
    enabled: bool = True
    # Announce each occurrence this long before it (e.g. [432000, 600]: 5 days and 10 minutes).
    notice_lead_s: list[Annotated[float, Field(gt=0, le=60 * 86400)]] = Field(default=[],
                                                                             max_length=10)
    # Late start policy: within this long after its time an occurrence still fires (late);
    # after it, it is recorded as missed and raises an alert, never sounded hours late.
    grace_s: float = Field(default=300.0, ge=0, le=6 * 3600)

    @model_validator(mode="after")
    def _check(self) -> PlanConfig:
        offsets = [s.offset_s for s in self.steps]
        if offsets != sorted(set(offsets)) or offsets[0] != 0:
            raise ValueError("step offsets start at 0 and increase")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def plan_problems(plan: PlanConfig, signals: dict[str, SignalConfig], siren_ids: set[str],
                  zone_ids: set[str], where: str = "") -> list[ConfigProblem]:
    """What the plan refers to must exist, and its steps must not overlap."""
    problems: list[ConfigProblem] = []
    prefix = f"{where}." if where else ""
    for i, step in enumerate(plan.steps):
        if step.signal is not None and step.signal not in signals:
            problems.append(ConfigProblem(f"{prefix}steps[{i}].signal",
                                          f"unknown signal {step.signal!r}"))
    for i, (step, following) in enumerate(zip(plan.steps, plan.steps[1:], strict=False)):
        busy = signals[step.signal].duration_s if step.signal in signals and step.signal else 30
        if following.offset_s < step.offset_s + busy + 2:
            problems.append(ConfigProblem(
                f"{prefix}steps[{i + 1}].offset_s",
                f"starts before step {i}'s signal has played out ({busy:g} s + 2 s)"))
    for i, siren_id in enumerate(plan.targets.sirens):
        if siren_id not in siren_ids:
            problems.append(ConfigProblem(f"{prefix}targets.sirens[{i}]",
                                          f"unknown siren {siren_id!r}"))
    for i, zone_id in enumerate(plan.targets.zones):
        if zone_id not in zone_ids:
            problems.append(ConfigProblem(f"{prefix}targets.zones[{i}]",
                                          f"unknown zone {zone_id!r}"))
    return problems

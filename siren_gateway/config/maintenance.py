"""Maintenance: which alerts open a work order by themselves, and how a repair is verified."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from pydantic import Field, model_validator

from siren_gateway.config.common import Identifier, Severity, StrictModel, TimeZoneName
from siren_gateway.config.plans import PlanTargets, RecurrenceConfig


class AutoOpenRule(StrictModel):
    """Open a work order when a siren's alert of one of `rules` (any rule when empty) is
    raised at `min_severity` or worse."""

    rules: list[Identifier] = []
    min_severity: Severity = "critical"


def _default_auto_open() -> list[AutoOpenRule]:
    return [AutoOpenRule(min_severity="critical")]


class ChecklistItem(StrictModel):
    id: Identifier
    text: str = Field(min_length=1, max_length=200)
    text_zh: str | None = Field(default=None, max_length=200)


# What a field inspection of an outdoor siren looks at (from field practice: the cabinet, the
# power chain, the audio chain, the link, the mast, and the siren's own self-test).
DEFAULT_CHECKLIST = (
    ChecklistItem(id="cabinet_sealed_dry", text="Cabinet sealed, dry, no corrosion",
                  text_zh="机柜密封、干燥，无锈蚀"),
    ChecklistItem(id="battery_under_load", text="Battery voltage under load",
                  text_zh="蓄电池带载电压"),
    ChecklistItem(id="battery_terminals", text="Battery terminals tight and clean",
                  text_zh="蓄电池接线端子紧固、清洁"),
    ChecklistItem(id="horn_and_driver", text="Horn or speaker and driver intact",
                  text_zh="号筒或扬声器及驱动器完好"),
    ChecklistItem(id="mains_supply", text="Mains supply and charger", text_zh="市电供电及充电器"),
    ChecklistItem(id="earthing_lightning", text="Earthing and lightning protection",
                  text_zh="接地及防雷设施"),
    ChecklistItem(id="antenna_link", text="Antenna, cabling and link quality",
                  text_zh="天线、馈线及通信质量"),
    ChecklistItem(id="mounting", text="Mast and mounting secure", text_zh="支架及安装牢固"),
    ChecklistItem(id="silent_test", text="Silent test passed", text_zh="静默测试通过"),
)


class InspectionPlanConfig(StrictModel):
    """A seasonal inspection (before the flood season, before winter ...): at each occurrence,
    in local time, one task per target siren, due `due_after_days` later."""

    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    name_zh: str | None = Field(default=None, max_length=200)
    timezone: TimeZoneName = "Asia/Shanghai"
    recurrence: RecurrenceConfig
    targets: PlanTargets = PlanTargets(all=True)
    due_after_days: float = Field(default=30.0, gt=0, le=366)
    checklist: list[ChecklistItem] = Field(default=list(DEFAULT_CHECKLIST), min_length=1,
                                           max_length=100)

    @model_validator(mode="after")
    def _check(self) -> InspectionPlanConfig:
        ids = [item.id for item in self.checklist]
        if len(ids) != len(set(ids)):
            raise ValueError("checklist item ids must be unique")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class MaintenanceConfig(StrictModel):
    auto_open: list[AutoOpenRule] = Field(default_factory=_default_auto_open)
    # A resolved order's faults must stay gone this long before the siren is believed.
    settle_s: float = Field(default=300.0, ge=0, le=86400)
    # Faults of the audio chain, beside each profile's own `silencing_faults`: an order about
    # one of them is verified only by a passing silent test on that siren.
    audio_faults: list[Identifier] = ["amplifier_fault", "driver_fault", "speaker_fault",
                                      "horn_fault"]
    # Verified and cancelled orders, done inspection tasks, kept in memory for the lists (open
    # ones are all held).
    keep_closed: int = Field(default=500, ge=10, le=100_000)
    inspection_plans: list[InspectionPlanConfig] = []
    inspection_overdue_severity: Severity = "minor"

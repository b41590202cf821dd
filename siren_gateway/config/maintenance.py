"""Maintenance: which alerts open a work order by themselves, and how a repair is verified."""

from __future__ import annotations

from pydantic import Field

from siren_gateway.config.common import Identifier, Severity, StrictModel


class AutoOpenRule(StrictModel):
    """Open a work order when a siren's alert of one of `rules` (any rule when empty) is
    raised at `min_severity` or worse."""

    rules: list[Identifier] = []
    min_severity: Severity = "critical"


def _default_auto_open() -> list[AutoOpenRule]:
    return [AutoOpenRule(min_severity="critical")]


class MaintenanceConfig(StrictModel):
    auto_open: list[AutoOpenRule] = Field(default_factory=_default_auto_open)
    # A resolved order's faults must stay gone this long before the siren is believed.
    settle_s: float = Field(default=300.0, ge=0, le=86400)
    # Faults of the audio chain, beside each profile's own `silencing_faults`: an order about
    # one of them is verified only by a passing silent test on that siren.
    audio_faults: list[Identifier] = ["amplifier_fault", "driver_fault", "speaker_fault",
                                      "horn_fault"]
    # Verified and cancelled orders kept in memory for the lists (open ones are all held).
    keep_closed: int = Field(default=500, ge=10, le=100_000)

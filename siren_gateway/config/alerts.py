"""Maintenance alert rules (thresholds, fault severities, overrides) and where notices go."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from siren_gateway.config.common import Port, Severity, StrictModel


class ThresholdRule(StrictModel):
    """Raise when `point` goes below `below` (or above `above`) for `for_s`; clear only once it
    is back past `clear_at` (hysteresis), so a value hovering at the limit does not flap."""

    point: str
    severity: Severity = "major"
    below: float | None = None
    above: float | None = None
    clear_at: float
    for_s: float = Field(default=0.0, ge=0, le=86400)
    enabled: bool = True

    @model_validator(mode="after")
    def _check(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of 'below' and 'above'")
        if self.below is not None and self.clear_at < self.below:
            raise ValueError("clear_at must be at or above 'below'")
        if self.above is not None and self.clear_at > self.above:
            raise ValueError("clear_at must be at or below 'above'")
        return self


def _default_thresholds() -> dict[str, ThresholdRule]:
    return {
        "battery_low": ThresholdRule(point="battery_voltage", below=23.0, clear_at=23.6,
                                     for_s=30, severity="major"),
        "cabinet_temperature_high": ThresholdRule(point="cabinet_temperature", above=55.0,
                                                  clear_at=50.0, for_s=120, severity="minor"),
    }


def _default_faults() -> dict[str, Severity]:
    return {"mains_lost": "major", "dc_fault": "critical", "charger_fault": "minor",
            "door_open": "minor", "battery_box_open": "minor", "sabotage": "critical",
            "local_activation": "critical", "amplifier_fault": "critical",
            "driver_fault": "critical", "overheat": "major"}


class AlertOverride(StrictModel):
    """Change one rule for one siren or for every siren of a zone (siren beats zone)."""

    rule: str
    siren: str | None = None
    zone: str | None = None
    enabled: bool | None = None
    severity: Severity | None = None
    below: float | None = None
    above: float | None = None
    clear_at: float | None = None
    for_s: float | None = None

    @model_validator(mode="after")
    def _check(self) -> AlertOverride:
        if (self.siren is None) == (self.zone is None):
            raise ValueError("an override names exactly one of 'siren' and 'zone'")
        return self


class WebhookConfig(StrictModel):
    url: Annotated[str, Field(pattern=r"^https?://")]
    min_severity: Severity = "minor"
    zones: list[str] = []  # empty: every zone
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=6, ge=1, le=50)
    retry_initial_s: float = Field(default=1.0, gt=0, le=600)


class MqttNotifierConfig(StrictModel):
    host: str
    port: Port = 1883
    topic: str = "siren-gateway/alerts/active"
    # Schedule notices and occurrence changes, one message each (QoS 1, not retained), so
    # announcement systems can warn the public before a test.
    schedule_topic: str = "siren-gateway/schedule/events"
    username: str | None = None
    password: str | None = None
    tls: bool = False


class AlertsConfig(StrictModel):
    thresholds: dict[str, ThresholdRule] = Field(default_factory=_default_thresholds)
    faults: dict[str, Severity] = Field(default_factory=_default_faults)
    offline_after_s: float = Field(default=60.0, gt=0)
    offline_severity: Severity = "major"
    clock_skew_s: float = Field(default=5.0, gt=0)
    clock_skew_severity: Severity = "minor"
    disarmed_severity: Severity = "info"  # disarmed for maintenance: shown, counted as down
    activation_failure_severity: Severity = "major"
    spool_overflow_severity: Severity = "major"
    missed_test_severity: Severity = "major"  # a scheduled test that did not sound
    storage_failure_severity: Severity = "critical"  # the state database refuses writes
    login_attack_severity: Severity = "major"  # many failed logins from one address or user
    # A condition must stay gone this long before its alert clears: no storm from flapping.
    clear_after_s: float = Field(default=10.0, ge=0, le=86400)
    overrides: list[AlertOverride] = []
    webhooks: list[WebhookConfig] = []
    mqtt: MqttNotifierConfig | None = None

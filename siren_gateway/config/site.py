"""Site configuration: the YAML file that describes one district's sirens, validated at the edge.

Every problem is reported with the file, the path of the bad key (``sirens[3].link.port``) and why.
Unknown keys, duplicate ids, unknown zones and unknown profiles are errors: a typo in a safety
system's configuration must stop it from starting, not be ignored.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from siren_gateway.coverage.config import CoverageConfig, ZoneKind, zone_area
from siren_gateway.data import DEFAULT_PROFILES_DIR, DEFAULT_SIGNALS_FILE
from siren_gateway.profiles.modbus import DeviceProfile, ModbusProfile, parse_profile
from siren_gateway.scheduling.recurrence import (
    WEEKDAYS,
    Cron,
    MonthlyNthWeekday,
    Rule,
    Yearly,
    parse_time_of_day,
)

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
MAX_LIST = 50_000  # sirens named in one request or plan (a province has tens of thousands)
Port = Annotated[int, Field(ge=1, le=65535)]
UnitId = Annotated[int, Field(ge=0, le=247)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusTcpLink(_Strict):
    """Modbus TCP (MBAP framing) to a controller or a Modbus gateway."""

    type: Literal["modbus_tcp"]
    host: str
    port: Port = 502
    unit_id: UnitId = 1
    timeout_s: float = Field(default=1.0, gt=0, le=30)


class ModbusRtuOverTcpLink(_Strict):
    """Modbus RTU frames tunnelled through a serial device server (RS-485 multidrop)."""

    type: Literal["modbus_rtu_over_tcp"]
    host: str
    port: Port
    unit_id: UnitId = Field(ge=1)
    timeout_s: float = Field(default=1.0, gt=0, le=30)


class ModbusRtuSerialLink(_Strict):
    """Modbus RTU on a local serial port."""

    type: Literal["modbus_rtu"]
    device: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: UnitId = Field(ge=1)
    timeout_s: float = Field(default=1.0, gt=0, le=30)


class MqttLink(_Strict):
    """A controller that reports to (and takes commands from) the site's MQTT broker."""

    type: Literal["mqtt"]
    # The {device} part of its topics; default: the siren id.
    device_id: Identifier | None = None
    # Overrides the profile's reporting interval (stale and offline are judged from it).
    telemetry_interval_s: float | None = Field(default=None, gt=0, le=3600)


ModbusLink = ModbusTcpLink | ModbusRtuOverTcpLink | ModbusRtuSerialLink
Link = Annotated[
    ModbusTcpLink | ModbusRtuOverTcpLink | ModbusRtuSerialLink | MqttLink,
    Field(discriminator="type"),
]
LINK_TYPES = frozenset({"modbus_tcp", "modbus_rtu_over_tcp", "modbus_rtu", "mqtt"})


def endpoint_key(link: ModbusLink) -> str:
    """Sirens whose links share this key share one connection (and its request queue)."""
    if isinstance(link, ModbusRtuSerialLink):
        return f"serial:{link.device}"
    return f"{link.type}:{link.host}:{link.port}"


class Location(_Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class SirenConfig(_Strict):
    id: Identifier
    name: str = Field(min_length=1)
    location: Location
    zones: list[Identifier] = []
    profile: Identifier
    link: Link
    poll_interval_s: float = Field(default=5.0, ge=0.05, le=3600)
    # In maintenance: never sounded, raises nothing. Still polled so its health stays visible.
    inhibited: bool = False
    # Rated sound level, dB(C) at 30 m, from the asset record; default: its profile's.
    rated_db_c: float | None = Field(default=None, ge=60, le=150)


MqttTopicPrefix = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]


class MqttTlsConfig(_Strict):
    ca_file: str | None = None  # None: the system's trust store
    cert_file: str | None = None  # client certificate, for brokers that ask for one
    key_file: str | None = None
    # Only for a lab broker with a self-signed certificate: accepts any server.
    insecure_skip_verify: bool = False


class MqttBrokerConfig(_Strict):
    """The broker the site's MQTT controllers report to (mosquitto, EMQX, ...; MQTT 3.1.1)."""

    host: str
    port: Port = 1883
    username: str | None = None
    password: str | None = None
    tls: MqttTlsConfig | None = None
    # Two gateways with one client id would keep disconnecting each other: default is unique.
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    topic_prefix: MqttTopicPrefix = "sirens"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_initial_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=600)
    # A connect (or subscribe) left unanswered, e.g. by a broker that is shutting down or
    # starting up, is given up after this and retried, rather than holding the link for long.
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # A command with no accepted/rejected acknowledgement by then is reported unacknowledged.
    ack_timeout_s: float = Field(default=5.0, gt=0, le=120)
    # Silent for this many reporting intervals: offline (stale comes first, as for polling).
    offline_after_intervals: float = Field(default=4.0, ge=1.5, le=100)
    # Commands being published at once; aiomqtt stalls with thousands pending.
    publish_window: int = Field(default=64, ge=1, le=10_000)
    # Inbound messages waiting to be handled; beyond it the oldest are dropped (counted).
    max_queued_messages: int = Field(default=50_000, ge=100, le=1_000_000)


class ZoneConfig(_Strict):
    id: Identifier
    name: str
    name_zh: str | None = None
    # Its area (GeoJSON Polygon or MultiPolygon, lon/lat), for audible coverage (docs/coverage.md)
    area: dict[str, Any] | None = None
    kind: ZoneKind = "suburban"  # picks the excess attenuation of the sound model
    threshold_db: float | None = Field(default=None, ge=30, le=140)  # default: coverage's
    ambient_db: float | None = Field(default=None, ge=0, le=120)  # measured background level
    target_share: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _check_area(self) -> ZoneConfig:
        if self.area is not None:
            zone_area(self.area)
        return self


class SignalStep(_Strict):
    on_s: float = Field(gt=0, le=3600)
    off_s: float = Field(default=0, ge=0, le=3600)
    repeat: int = Field(default=1, ge=1, le=1000)


class SignalConfig(_Strict):
    id: Identifier
    name_en: str
    name_zh: str
    tone: Literal["steady", "wailing"]
    steps: list[SignalStep] = Field(min_length=1)

    @property
    def duration_s(self) -> float:
        """Time from the first onset until the pattern ends (a trailing pause is not sounding)."""
        total = sum((s.on_s + s.off_s) * s.repeat for s in self.steps)
        return total - self.steps[-1].off_s


class SiteInfo(_Strict):
    name: str
    name_zh: str | None = None
    timezone: str = "Asia/Shanghai"


class PollingConfig(_Strict):
    # Consecutive failed polls before a siren is declared offline.
    offline_after_failures: int = Field(default=3, ge=1, le=100)
    # A siren is stale when its last good poll is older than this many poll intervals.
    stale_after_intervals: float = Field(default=2.5, ge=1.0, le=100)
    # Longest wait between polls of a failing device (exponential back-off up to this).
    backoff_max_s: float = Field(default=60.0, ge=1, le=3600)
    jitter_fraction: float = Field(default=0.05, ge=0, le=0.5)


class StorageConfig(_Strict):
    path: str = "siren-gateway.db"
    telemetry_retention_days: float = Field(default=30.0, gt=0)
    # Store a sample per siren at most this often unless something discrete changed (state,
    # faults, flags); 0 stores every poll.
    telemetry_min_interval_s: float = Field(default=60.0, ge=0)


class InfluxConfig(_Strict):
    """A time-series server with the InfluxDB v2 write API (InfluxDB 2.x/3.x/1.8+, VictoriaMetrics)."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    token: str = ""
    org: str = "siren-gateway"
    bucket: str = "sirens"
    measurement: str = "siren_status"
    # VictoriaMetrics stores a string field as a series of zeros: turn strings off for it.
    string_fields: bool = True
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Writes in flight at once: the next batch is encoded while the server digests one.
    max_in_flight: int = Field(default=2, ge=1, le=16)
    retry_initial_s: float = Field(default=0.5, gt=0, le=60)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    queue_size: int = Field(default=200_000, ge=1000)
    spool_dir: str = "telemetry-spool"  # relative to the database file's folder
    spool_max_mb: float = Field(default=512, gt=0)


Severity = Literal["info", "minor", "major", "critical"]
SEVERITY_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}


class ThresholdRule(_Strict):
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


class AlertOverride(_Strict):
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


class WebhookConfig(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://")]
    min_severity: Severity = "minor"
    zones: list[str] = []  # empty: every zone
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=6, ge=1, le=50)
    retry_initial_s: float = Field(default=1.0, gt=0, le=600)


class MqttNotifierConfig(_Strict):
    host: str
    port: Port = 1883
    topic: str = "siren-gateway/alerts/active"
    # Schedule notices and occurrence changes, one message each (QoS 1, not retained), so
    # announcement systems can warn the public before a test.
    schedule_topic: str = "siren-gateway/schedule/events"
    username: str | None = None
    password: str | None = None
    tls: bool = False


class AlertsConfig(_Strict):
    thresholds: dict[str, ThresholdRule] = Field(default_factory=_default_thresholds)
    faults: dict[str, Severity] = Field(default_factory=_default_faults)
    offline_after_s: float = Field(default=60.0, gt=0)
    offline_severity: Severity = "major"
    clock_skew_s: float = Field(default=5.0, gt=0)
    clock_skew_severity: Severity = "minor"
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


class LoginConfig(_Strict):
    """Throttling of failed logins (per source address and per username)."""

    free_failures: int = Field(default=5, ge=1, le=1000)  # before any delay
    base_delay_s: float = Field(default=1.0, gt=0, le=3600)  # doubles with each failure
    max_delay_s: float = Field(default=60.0, gt=0, le=86400)
    # A source address with this many failures in the window is locked out for lockout_s
    # (usernames only get the growing delay: a lockout would let anyone lock an operator out).
    lockout_after: int = Field(default=50, ge=2, le=100_000)
    lockout_s: float = Field(default=900.0, ge=1, le=7 * 86400)
    window_s: float = Field(default=900.0, ge=10, le=7 * 86400)
    alert_after: int = Field(default=20, ge=1, le=100_000)  # login_attack alert


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: Port = 8080
    # A session's absolute lifetime, and how long it may go unused.
    token_ttl_s: float = Field(default=8 * 3600, ge=60, le=7 * 86400)
    token_idle_s: float = Field(default=2 * 3600, ge=60, le=7 * 86400)
    tokens_per_user: int = Field(default=20, ge=1, le=10_000)
    # Request bodies larger than this are refused (413) while being read, before anything else.
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    # HTTPS: the API serves TLS itself when both are given (PEM files).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Reverse proxies whose X-Forwarded-For / -Proto are believed (addresses, or "*").
    trusted_proxies: list[Annotated[str, Field(max_length=64)]] = []
    login: LoginConfig = LoginConfig()

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class UserConfig(_Strict):
    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    role: Literal["viewer", "operator", "admin"]
    # argon2id hash from `siren-gateway hash-password` (scrypt hashes of earlier versions are
    # still accepted and upgraded at login); never a plain password
    password_hash: Annotated[str, Field(
        max_length=512,
        pattern=r"^(\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
                r"|scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+)$")]


class ActivationConfig(_Strict):
    # Commands carry a start time this far ahead so every siren starts together.
    sync_lead_s: float = Field(default=2.0, ge=0.5, le=60)
    # A siren whose clock is off by more than this is started by the gateway at the moment
    # instead of by its own clock.
    clock_tolerance_s: float = Field(default=1.5, ge=0.1, le=600)
    # After the start time, how long to wait for a siren's own confirmation.
    confirm_timeout_s: float = Field(default=15.0, ge=1, le=600)
    confirm_poll_interval_s: float = Field(default=0.5, ge=0.05, le=10)
    # Deliveries are retried until this long after the start time, then reported.
    delivery_grace_s: float = Field(default=3.0, ge=0, le=120)
    # The same request again within this window is not sent twice.
    duplicate_window_s: float = Field(default=120.0, ge=0, le=3600)
    # Lifetime of an emergency confirmation token from the preview.
    confirmation_ttl_s: float = Field(default=60.0, ge=5, le=600)
    # Faults that mean a siren did not really sound, if reported while it sounds.
    failing_faults: list[str] = ["amplifier_fault", "driver_fault"]
    # Finished activations held in memory (the dashboard's recent list): at most this many,
    # and no more per-siren results in all than the second figure (a 9·18 test of 6,000
    # sirens is 6,000 results, ~7 MB). Older ones stay in the database and are read from there
    # when asked for, so memory does not grow with time.
    keep_in_memory: int = Field(default=100, ge=10, le=10000)
    keep_results_in_memory: int = Field(default=5000, ge=10, le=1_000_000)


class PlanTargets(_Strict):
    sirens: list[Identifier] = Field(default=[], max_length=MAX_LIST)
    zones: list[Identifier] = Field(default=[], max_length=1000)
    all: bool = False

    @model_validator(mode="after")
    def _some(self) -> PlanTargets:
        if not (self.all or self.sirens or self.zones):
            raise ValueError("name sirens, zones or all: true")
        return self


class YearlyRule(_Strict):
    type: Literal["yearly"]
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    time: str = Field(max_length=16)

    @model_validator(mode="after")
    def _check(self) -> YearlyRule:
        date(2024, self.month, self.day)  # a leap year: 29 February is allowed (leap years only)
        parse_time_of_day(self.time)
        return self


class MonthlyRule(_Strict):
    type: Literal["monthly"]
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    nth: Literal[1, 2, 3, 4, 5, -1]  # -1: the last one of the month
    time: str = Field(max_length=16)

    @model_validator(mode="after")
    def _check(self) -> MonthlyRule:
        parse_time_of_day(self.time)
        return self


class CronRule(_Strict):
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


class PlanStep(_Strict):
    offset_s: float = Field(ge=0, le=6 * 3600)  # from the occurrence's start
    action: Literal["sound", "silent_test"] = "sound"
    signal: Identifier | None = None

    @model_validator(mode="after")
    def _check(self) -> PlanStep:
        if (self.action == "sound") != (self.signal is not None):
            raise ValueError("a sound step names a signal; a silent test does not")
        return self


class PlanConfig(_Strict):
    """A recurring test sounding: when (local time in a named zone), what, on which sirens."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: Identifier
    name: str = Field(min_length=1, max_length=200)
    name_zh: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="Asia/Shanghai", max_length=64)
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
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
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


class SiteConfig(_Strict):
    site: SiteInfo
    profiles_dir: str | None = None  # relative to the site file; default: siren_gateway/data/devices
    zones: list[ZoneConfig] = []
    sirens: list[SirenConfig] = Field(min_length=1)
    signals: list[SignalConfig] | None = None  # None: the shipped defaults
    polling: PollingConfig = PollingConfig()
    storage: StorageConfig = StorageConfig()
    influx: InfluxConfig | None = None
    mqtt: MqttBrokerConfig | None = None
    api: ApiConfig = ApiConfig()
    users: list[UserConfig] = []
    activation: ActivationConfig = ActivationConfig()
    alerts: AlertsConfig = AlertsConfig()
    schedules: list[PlanConfig] = []
    coverage: CoverageConfig = CoverageConfig()

    @model_validator(mode="after")
    def _check_signal_ids(self) -> SiteConfig:
        ids = [s.id for s in self.signals or []]
        if len(ids) != len(set(ids)):
            raise ValueError("signal ids must be unique")
        plans = [p.id for p in self.schedules]
        if len(plans) != len(set(plans)):
            raise ValueError("schedule ids must be unique")
        return self


@dataclass(frozen=True)
class ConfigProblem:
    path: str  # e.g. sirens[3].link.port; empty for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, file: Path, problems: list[ConfigProblem]):
        self.file = file
        self.problems = problems
        lines = "\n".join(f"{file}: {p}" for p in problems)
        super().__init__(lines)


@dataclass(frozen=True)
class Site:
    """A validated configuration together with what it refers to (profiles, signals)."""

    config: SiteConfig
    profiles: dict[str, DeviceProfile]
    signals: dict[str, SignalConfig]
    source: Path | None

    def siren(self, siren_id: str) -> SirenConfig | None:
        return next((s for s in self.config.sirens if s.id == siren_id), None)

    def modbus_profile(self, name: str) -> ModbusProfile:
        profile = self.profiles[name]
        if not isinstance(profile, ModbusProfile):
            raise TypeError(f"profile {name!r} is not a Modbus profile")
        return profile


# libyaml's parser where PyYAML was built with it: for a 6,000-siren site a third less memory
# at the peak and 3x faster than the pure-Python one (measured with bench/memory.py).
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc]
    """PyYAML keeps the last of two equal keys silently; in a safety config that is an error."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [ConfigProblem("", f"{where}invalid YAML: {problem}")]) from exc


def format_location(loc: tuple[int | str, ...]) -> str:
    """('sirens', 3, 'link', 'modbus_tcp', 'port') -> 'sirens[3].link.port'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in LINK_TYPES and i > 0 and loc[i - 1] == "link":
            continue  # pydantic names the union member it tried; the user never wrote it
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from_validation(exc: ValidationError) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        problems.append(ConfigProblem(format_location(tuple(err["loc"])), message))
    return problems


def load_profile_file(file: Path) -> DeviceProfile:
    data = read_yaml(file)
    try:
        return parse_profile(data, file)
    except ValidationError as exc:
        raise ConfigError(file, problems_from_validation(exc)) from exc


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    profiles: dict[str, DeviceProfile] = {}
    for file in sorted(directory.glob("*.yaml")):
        profile = load_profile_file(file)
        if profile.name in profiles:
            raise ConfigError(file, [ConfigProblem("model", f"model {profile.name!r} is defined "
                                                   f"twice (also in {profiles[profile.name].source})")])
        profiles[profile.name] = profile
    return profiles


def load_default_signals() -> list[SignalConfig]:
    data = read_yaml(DEFAULT_SIGNALS_FILE)
    try:
        return [SignalConfig.model_validate(item) for item in data["signals"]]
    except ValidationError as exc:
        raise ConfigError(DEFAULT_SIGNALS_FILE, problems_from_validation(exc)) from exc


def _check_references(
    config: SiteConfig, profiles: dict[str, DeviceProfile], signals: dict[str, SignalConfig]
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    zone_ids: set[str] = set()
    for i, zone in enumerate(config.zones):
        if zone.id in zone_ids:
            problems.append(ConfigProblem(f"zones[{i}].id", f"duplicate zone id {zone.id!r}"))
        zone_ids.add(zone.id)
    siren_ids: set[str] = set()
    units: dict[tuple[str, int], str] = {}
    devices: dict[str, str] = {}
    for i, siren in enumerate(config.sirens):
        if siren.id in siren_ids:
            problems.append(ConfigProblem(f"sirens[{i}].id", f"duplicate siren id {siren.id!r}"))
        siren_ids.add(siren.id)
        for j, zone_id in enumerate(siren.zones):
            if zone_id not in zone_ids:
                problems.append(ConfigProblem(f"sirens[{i}].zones[{j}]", f"unknown zone {zone_id!r}"))
        profile = profiles.get(siren.profile)
        if profile is None:
            known = ", ".join(sorted(profiles)) or "none"
            problems.append(ConfigProblem(f"sirens[{i}].profile",
                                          f"unknown profile {siren.profile!r} (known: {known})"))
        link = siren.link
        wants = "mqtt" if isinstance(link, MqttLink) else "modbus"
        if profile is not None and profile.protocol != wants:
            problems.append(ConfigProblem(
                f"sirens[{i}].profile", f"profile {siren.profile!r} speaks {profile.protocol}, "
                f"but the link is {link.type}"))
        if isinstance(link, MqttLink):
            device = link.device_id or siren.id
            if device in devices:
                problems.append(ConfigProblem(f"sirens[{i}].link.device_id",
                                              f"MQTT device id {device!r} is also siren "
                                              f"{devices[device]!r}'s"))
            devices[device] = siren.id
            if config.mqtt is None:
                problems.append(ConfigProblem(f"sirens[{i}].link",
                                              "an MQTT siren needs the site's 'mqtt' broker section"))
            continue
        unit = (endpoint_key(link), link.unit_id)
        if unit in units:
            problems.append(ConfigProblem(
                f"sirens[{i}].link",
                f"same endpoint and unit id as siren {units[unit]!r}: two sirens cannot share a "
                "Modbus address"))
        units[unit] = siren.id
    alerts = config.alerts
    rules = {*alerts.thresholds, *alerts.faults, "offline", "clock_skew", "activation_failed"}
    for i, override in enumerate(alerts.overrides):
        where = f"alerts.overrides[{i}]"
        if override.rule not in rules:
            problems.append(ConfigProblem(f"{where}.rule", f"unknown rule {override.rule!r} "
                                          f"(known: {', '.join(sorted(rules))})"))
        if override.zone is not None and override.zone not in zone_ids:
            problems.append(ConfigProblem(f"{where}.zone", f"unknown zone {override.zone!r}"))
        if override.siren is not None and override.siren not in siren_ids:
            problems.append(ConfigProblem(f"{where}.siren", f"unknown siren {override.siren!r}"))
    for i, hook in enumerate(alerts.webhooks):
        for j, zone_id in enumerate(hook.zones):
            if zone_id not in zone_ids:
                problems.append(ConfigProblem(f"alerts.webhooks[{i}].zones[{j}]",
                                              f"unknown zone {zone_id!r}"))
    usernames: set[str] = set()
    for i, user in enumerate(config.users):
        if user.username in usernames:
            problems.append(ConfigProblem(f"users[{i}].username",
                                          f"duplicate user {user.username!r}"))
        usernames.add(user.username)
    for i, plan in enumerate(config.schedules):
        problems += plan_problems(plan, signals, siren_ids, zone_ids, f"schedules[{i}]")
    used_profiles = {s.profile for s in config.sirens}
    for profile in profiles.values():
        if profile.name not in used_profiles:
            continue
        for signal_id in profile.spec.signal_codes:
            if signal_id not in signals:
                problems.append(ConfigProblem(
                    "signals", f"profile {profile.name!r} has a code for signal {signal_id!r}, "
                    "which the site does not define"))
    return problems


def _json_scalar(value: Any) -> str:
    """YAML's own scalars that JSON lacks: dates and times, as ISO 8601 (pydantic reads them)."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} values are not allowed in a site file")


def load_site(file: Path) -> Site:
    """Read, validate and cross-check a site file; raise ConfigError listing every problem."""
    file = Path(file)
    data = read_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError(file, [ConfigProblem("", "the file must hold a mapping at the top")])
    try:
        # Validated from JSON text, not from the parsed objects: models built from Python
        # data keep its strings, which pin the freed YAML data's memory for the process's
        # life (bench/memory.py, 6,000 sirens: 40 MiB resident for the site, 20 MiB this way).
        text = json.dumps(data, default=_json_scalar, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(file, [ConfigProblem("", f"unsupported value: {exc}")]) from exc
    del data
    gc.collect()
    try:
        config = SiteConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(file, problems_from_validation(exc)) from exc
    del text
    profiles_dir = (
        (file.parent / config.profiles_dir).resolve() if config.profiles_dir else DEFAULT_PROFILES_DIR
    )
    if not profiles_dir.is_dir():
        raise ConfigError(file, [ConfigProblem("profiles_dir", f"not a directory: {profiles_dir}")])
    profiles = load_profiles(profiles_dir)
    signal_list = config.signals if config.signals is not None else load_default_signals()
    signals = {s.id: s for s in signal_list}
    problems = _check_references(config, profiles, signals)
    if problems:
        raise ConfigError(file, problems)
    used = {s.profile for s in config.sirens}
    return Site(config, {k: v for k, v in profiles.items() if k in used}, signals, file)

"""What the API answers: one response model per resource, so the OpenAPI document describes
every body (and the fuzz test holds the answers to it).

Times are ISO 8601 strings in UTC unless a field says local. Models forbid keys they do not
name: a field added to an engine's answer and not here fails the tests instead of vanishing
from the API. Where a part is diagnostic and changes with the deployment (the health report's
sections, coverage layers), it is typed as an open object and documented as such.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from siren_gateway.config.plans import PlanConfig

Reachability = Literal["unknown", "online", "stale", "offline"]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- sirens ------------------------------------------------------------------------------------

class LocationOut(Out):
    lat: float
    lon: float


class PollCounts(Out):
    ok: int
    failed: int


class SirenOut(Out):
    """One siren's live state, as the gateway believes it now."""

    id: str
    name: str
    zones: list[str]
    location: LocationOut
    profile: str
    inhibited: bool
    online: bool
    reachability: Reachability
    reachability_since: str
    state: str | None = Field(description="the controller's state; null unless online")
    last_known_state: str | None
    sounding: bool
    horn_on: bool | None
    last_seen: str | None
    last_error: str | None
    consecutive_failures: int
    faults: list[str]
    telemetry: dict[str, Any] | None = Field(description="the latest status, point by point")
    device_time: str | None
    clock_skew_s: float | None = Field(description="controller clock minus gateway clock")
    polls: PollCounts
    status_class: Literal["healthy", "degraded", "fault", "offline", "sounding", "inhibited"] = \
        Field(description="one word for the map: out of service (inhibited or disarmed), "
              "offline, sounding, fault, degraded (a minor fault or a late answer), healthy")


class HistoryRowOut(Out):
    """A stored sample, or (when a range holds more than asked) a time bucket of them."""

    time: str
    device_time: str | None
    faults: list[str]
    values: dict[str, Any]
    bucket_s: float | None = None
    samples: int | None = Field(default=None, description="samples in the bucket")


class SirenDetailOut(SirenOut):
    history: list[HistoryRowOut] = Field(description="oldest first")


class ClockSetOut(Out):
    set: list[str]
    failed: dict[str, str] = Field(description="siren -> why its clock was not set")
    clock: str
    after_activation: dict[str, int] = Field(
        description="siren -> the activation whose proof of sounding it waited for (its clock "
                    "was set a moment later, to a later second)")


class CommandOutcomeOut(Out):
    siren_id: str
    result: str = Field(description="confirmed, not_confirmed, failed, refused or unsupported")
    reason: str
    confirm_s: float | None
    after_activation: int | None = Field(
        description="the activation whose proof of sounding this command waited for: another "
                    "command in between would have replaced the sequence that proves it")


class CommandsOut(Out):
    command: str
    counts: dict[str, int]
    sirens: list[CommandOutcomeOut]


class SignalStepOut(Out):
    on_s: float
    off_s: float
    repeat: int


class SignalOut(Out):
    id: str
    name_en: str
    name_zh: str
    tone: Literal["steady", "wailing"]
    steps: list[SignalStepOut]
    duration_s: float = Field(description="from the first onset to the end of the last tone")


class ZoneOut(Out):
    id: str
    name: str
    name_zh: str | None
    area: dict[str, Any] | None = Field(description="GeoJSON geometry, if the site gives one")
    kind: str
    threshold_db: float | None
    ambient_db: float | None
    target_share: float | None


class MapOut(Out):
    tile_url: str | None = Field(description="the site's tile server ({z}/{x}/{y}); null: "
                                 "the map draws the site's own geometry only")
    attribution: str
    max_zoom: int


class SiteOut(Out):
    name: str
    name_zh: str | None
    timezone: str
    zones: list[ZoneOut]
    map: MapOut


# -- activations -------------------------------------------------------------------------------

class SirenResultOut(Out):
    siren_id: str
    status: str
    reason: str
    planned_start: str | None
    sent_at: str | None
    accepted_at: str | None
    confirmed_at: str | None
    clock_skew_s: float | None
    started_by_gateway: bool
    activation_id: int
    klass: str
    command_id: str
    sends: int
    confirm_latency_s: float | None = None


class ActivationSummaryOut(Out):
    id: int
    klass: str = Field(alias="class")
    action: str
    signal: str | None
    requested_by: str
    created_at: str | None
    start_at: str | None
    state: str
    ended_at: str | None
    interrupted_at: str | None
    all_accepted_at: str | None
    preempted_by: list[int]
    repeat_of: int | None
    counts: dict[str, int]
    targeted: int
    commanded: int
    sounding_rate: float | None = Field(description="share of commanded sirens that proved "
                                                    "they sounded (鸣响率)")


class ActivationOut(ActivationSummaryOut):
    sirens: list[SirenResultOut]


class PreviewSirenOut(Out):
    id: str
    name: str
    zones: list[str]
    reachability: Reachability
    faults: list[str]


class ExcludedOut(Out):
    id: str
    reason: str


class PreviewOut(Out):
    klass: str = Field(alias="class")
    action: str
    signal: str | None
    sirens: list[PreviewSirenOut]
    excluded: list[ExcludedOut]
    conflicts: list[dict[str, Any]]
    duplicate_of: dict[str, Any] | None
    confirmation_token: str | None = None
    confirmation_expires_at: str | None = None


# -- alerts and audit --------------------------------------------------------------------------

class AlertOut(Out):
    id: int
    rule: str
    siren_id: str | None
    zones: list[str]
    severity: Literal["info", "minor", "major", "critical"]
    message: str
    state: Literal["active", "acknowledged", "cleared"]
    raised_at: str | None
    acknowledged_at: str | None
    acknowledged_by: str | None
    comment: str | None
    cleared_at: str | None
    history: list[dict[str, Any]]
    subject: str | None


class AuditEntryOut(Out):
    id: int
    at: str
    username: str
    role: str | None
    action: str
    target: str | None
    details: Any
    outcome: str
    source: str | None
    user_agent: str | None
    hash: str | None


# -- schedules ---------------------------------------------------------------------------------

class OccurrenceOut(Out):
    id: int
    plan_id: str
    kind: Literal["planned", "run_now"]
    state: str
    scheduled_at: str | None
    scheduled_local: str
    local_date: str
    notices_sent_s: list[float]
    fired_at: str | None
    started_at: str | None
    late_s: float | None
    steps: list[dict[str, Any]]
    ended_at: str | None
    note: str


class NextOccurrenceOut(Out):
    scheduled_at: str
    scheduled_local: str
    local_date: str
    excluded: bool


class ReportOut(Out):
    """An occurrence's report: the 9·18 figure (how many sirens sounded), by step, zone, siren."""

    occurrence: OccurrenceOut
    plan: dict[str, Any]
    steps: list[dict[str, Any]]
    complete: bool
    warnings: list[str]
    counts: dict[str, int]
    commanded: int
    sounding_rate: float | None
    zones: dict[str, dict[str, Any]]
    sirens: list[dict[str, Any]]


# -- health ------------------------------------------------------------------------------------

class HealthOut(Out):
    """Anonymous callers get `status` only; a session gets the rest (diagnostic sections)."""

    status: Literal["ok", "starting"]
    site: str | None = None
    uptime_s: float | None = None
    sirens: dict[str, int] | None = None
    polls: dict[str, Any] | None = None
    endpoints: int | None = None
    mqtt: dict[str, Any] | None = None
    bus: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    telemetry_store: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    sessions: int | None = None
    influx_sink: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    leader: bool | None = Field(default=None, description="a cluster node: whether it leads "
                                "now (a load balancer may send the control room to it)")
    cluster: dict[str, Any] | None = None


# -- schedules: plans --------------------------------------------------------------------------

class PlanOut(PlanConfig):
    """A test plan as stored, and where it is defined (the site file or the API)."""

    source: Literal["config", "api"]


class PlanDetailOut(PlanOut):
    occurrences: list[OccurrenceOut] = Field(description="the last 50, in time order")


# -- coverage ----------------------------------------------------------------------------------

class ZoneCoverageOut(Out):
    zone: str
    name: str
    kind: str
    threshold_db: float
    target_share: float
    area_km2: float
    covered_share: float = Field(description="share of the area that would hear the alarm "
                                             "from the sirens able to sound now")
    healthy_share: float = Field(description="the same with every siren healthy")
    below_target: bool
    repair: list[str] = Field(description="sirens whose repair would restore the most area")


class DistrictCoverageOut(Out):
    area_km2: float
    covered_share: float
    healthy_share: float


class CoverageOut(Out):
    enabled: bool
    cell_m: float | None = None
    sirens_counted: int | None = None
    sirens: int | None = None
    zones: list[ZoneCoverageOut]
    district: DistrictCoverageOut | None


class CoverageLayerOut(Out):
    """Empty but for `enabled: false` until the first coverage has been computed."""

    enabled: bool
    width: int | None = None
    height: int | None = None
    bounds: dict[str, float] | None = Field(default=None, description="south, west, north, east")
    cells: str | None = Field(default=None, description="row by row from the southern edge, one "
                              "digit a cell: 0 outside every zone, 1 covered, 2 not covered, "
                              "3 lost")
    zones: list[dict[str, Any]] | None = Field(
        default=None, description="each zone's outline (rings of lat/lon)")


class SharesOut(Out):
    zones: dict[str, float]
    district: float


class WhatIfOut(Out):
    now: SharesOut
    would_be: SharesOut
    unknown_sirens: list[str]


class SiteGainOut(Out):
    id: str
    lat: float
    lon: float
    gain_cells: int
    gain_km2: float
    gain_share: float
    district_share_after: float | None = None


class SitingOut(Out):
    candidates: list[SiteGainOut]
    best: list[SiteGainOut] = Field(description="chosen one after another, greedily")


# -- work orders -------------------------------------------------------------------------------

class WorkOrderVerificationOut(Out):
    clear_since: str | None
    test_activation_id: int | None


class WorkOrderOut(Out):
    id: int
    siren_id: str
    cause: str
    priority: Literal["low", "normal", "high", "urgent"]
    state: Literal["open", "assigned", "in_progress", "resolved", "verified", "reopened",
                   "cancelled"]
    created_at: str | None
    created_by: str
    faults: list[str]
    audio: bool
    alert_id: int | None
    rule: str | None
    assignee: str | None
    due_at: str | None
    resolved_at: str | None
    verified_at: str | None
    evidence: dict[str, Any] | None
    notes: list[dict[str, Any]]
    history: list[dict[str, Any]]
    moves: list[str] = Field(description="the states a person may move it to now")
    verification: WorkOrderVerificationOut


# -- inspections -------------------------------------------------------------------------------

class InspectionTaskOut(Out):
    id: int
    plan_id: str
    siren_id: str
    scheduled_at: str | None
    due_at: str | None
    checklist: list[dict[str, Any]]
    state: Literal["open", "done"]
    overdue: bool
    completed_at: str | None
    completed_by: str | None
    results: dict[str, dict[str, Any]]
    notes: str
    evidence: dict[str, Any] | None


class InspectionPlanOut(BaseModel):
    """The plan as configured (config/maintenance.py), its next occurrence and its sirens."""

    model_config = ConfigDict(extra="allow")
    id: str
    name: str
    next: str | None
    sirens: int


# -- the cluster ---------------------------------------------------------------------------

class ClusterNodeOut(Out):
    id: str
    address: str
    pid: int
    leader: bool
    alive: bool = Field(description="heartbeat within the lease time")
    sirens_owned: int
    started_at: str
    last_heartbeat: str
    heartbeat_age_s: float
    this_node: bool


class ClusterOut(Out):
    mode: Literal["single", "cluster"]
    node_id: str | None = Field(description="the node that answered")
    leader_id: str | None
    lease_s: float | None
    nodes: list[ClusterNodeOut]
    live: dict[str, Any] | None = Field(
        default=None, description="the answering node's mirror of the others' sirens: rows "
        "written and applied, and how old the newest answer was when applied (lag)")


# -- the fleet at a glance --------------------------------------------------------------------

class FleetSummaryOut(Out):
    at: str
    total: int
    ready: int = Field(description="can sound now: online, armed, not inhibited, no fault "
                       "that silences it")
    ready_share: float
    with_faults: int
    offline: int = Field(description="offline or never heard from")
    sounding: int
    inhibited: int = Field(description="inhibited in the site file or disarmed")
    classes: dict[str, int]


class FleetPointOut(Out):
    at: str
    online: int
    with_faults: int


class FleetHistoryOut(Out):
    since: str
    until: str
    sirens: int
    points: list[FleetPointOut]


# -- asset register ----------------------------------------------------------------------------

class DeviceEvidenceOut(Out):
    """What the siren itself shows now (values its profile does not report are left out)."""

    at: str | None
    reachability: Reachability
    faults: list[str]
    last_seen: str | None
    values: dict[str, Any]


class AssetChangeOut(Out):
    at: str | None
    by: str  # a user, or "site file"
    changes: dict[str, list[Any]]  # field -> [old, new]


class AssetOut(Out):
    siren_id: str
    name: str
    zones: list[str]
    profile: str
    location: LocationOut
    serial_number: str | None
    model: str | None
    installed_on: str | None  # a date, YYYY-MM-DD
    installer: str | None
    mount_height_m: float | None
    battery_capacity_ah: float | None
    notes: str | None
    rated_db_c: float | None = Field(description="dB(C) at 30 m: the site file's, else the "
                                     "device profile's")
    device: DeviceEvidenceOut


class AssetDetailOut(AssetOut):
    history: list[AssetChangeOut]


# -- maintenance history -----------------------------------------------------------------------

class TimelineEntryOut(Out):
    at: str | None
    kind: Literal["alert", "work_order", "inspection", "activation", "asset"]
    id: int | None  # the alert's, order's, task's or activation's; none for an asset change
    summary: str
    details: dict[str, Any]


class MaintenanceFiguresOut(Out):
    sirens: int
    availability: float | None
    down_h: float
    failures: int
    repaired: int
    mttr_h: float | None
    mtbf_h: float | None
    orders_open: int
    inspections: int
    inspections_done: int
    inspections_overdue: int


class MaintenanceSirenOut(MaintenanceFiguresOut):
    sirens: int = 1
    siren: str
    name: str
    zones: list[str]
    up_h: float
    repair_hours: list[float]


class MaintenanceReportOut(Out):
    month: str
    timezone: str
    from_: str | None = Field(alias="from")
    until: str | None
    hours: float
    total: MaintenanceFiguresOut
    zones: dict[str, MaintenanceFiguresOut]
    sirens: list[MaintenanceSirenOut]

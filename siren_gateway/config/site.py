"""Site configuration: the YAML file that describes one district's sirens, validated at the edge.

Unknown keys, duplicate ids, unknown zones and unknown profiles are errors: a typo in a safety
system's configuration must stop it from starting, not be ignored. Each section's model lives in
its own module of this package; this one holds the whole file's model and the validated Site.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from siren_gateway.config.activation import ActivationConfig
from siren_gateway.config.alerts import AlertsConfig
from siren_gateway.config.api import ApiConfig, UserConfig
from siren_gateway.config.cluster import ClusterConfig
from siren_gateway.config.common import Identifier, StrictModel
from siren_gateway.config.dashboard import MapConfig
from siren_gateway.config.database import DatabaseConfig
from siren_gateway.config.links import Link, MqttBrokerConfig
from siren_gateway.config.maintenance import MaintenanceConfig
from siren_gateway.config.plans import PlanConfig
from siren_gateway.config.signals import SignalConfig
from siren_gateway.config.telemetry import InfluxConfig, StorageConfig
from siren_gateway.coverage.config import CoverageConfig, ZoneKind, zone_area
from siren_gateway.profiles.modbus import DeviceProfile, ModbusProfile


class Location(StrictModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class AssetConfig(StrictModel):
    """A siren's asset record as the site file keeps it (the API may edit it since: the latest
    edit of a field wins, see maintenance/assets.py). Firmware and what the siren measures come
    from the device, never from here; the rated sound level is the siren's `rated_db_c`."""

    serial_number: str | None = Field(default=None, min_length=1, max_length=64)
    model: str | None = Field(default=None, min_length=1, max_length=120)
    installed_on: date | None = None
    installer: str | None = Field(default=None, min_length=1, max_length=120)
    mount_height_m: float | None = Field(default=None, ge=0, le=200)
    battery_capacity_ah: float | None = Field(default=None, gt=0, le=10_000)
    notes: str | None = Field(default=None, max_length=4000)


class SirenConfig(StrictModel):
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
    asset: AssetConfig = AssetConfig()


class ZoneConfig(StrictModel):
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


class SiteInfo(StrictModel):
    name: str
    name_zh: str | None = None
    timezone: str = "Asia/Shanghai"


class PollingConfig(StrictModel):
    # Consecutive failed polls before a siren is declared offline.
    offline_after_failures: int = Field(default=3, ge=1, le=100)
    # A siren is stale when its last good poll is older than this many poll intervals.
    stale_after_intervals: float = Field(default=2.5, ge=1.0, le=100)
    # Longest wait between polls of a failing device (exponential back-off up to this).
    backoff_max_s: float = Field(default=60.0, ge=1, le=3600)
    jitter_fraction: float = Field(default=0.05, ge=0, le=0.5)


class SiteConfig(StrictModel):
    site: SiteInfo
    profiles_dir: str | None = None  # relative to the site file; default: siren_gateway/data/devices
    zones: list[ZoneConfig] = []
    sirens: list[SirenConfig] = Field(min_length=1)
    signals: list[SignalConfig] | None = None  # None: the shipped defaults
    polling: PollingConfig = PollingConfig()
    storage: StorageConfig = StorageConfig()
    database: DatabaseConfig | None = None  # None: SQLite at storage.path
    cluster: ClusterConfig = ClusterConfig()  # used by nodes run with --node-id
    influx: InfluxConfig | None = None
    mqtt: MqttBrokerConfig | None = None
    api: ApiConfig = ApiConfig()
    users: list[UserConfig] = []
    activation: ActivationConfig = ActivationConfig()
    alerts: AlertsConfig = AlertsConfig()
    schedules: list[PlanConfig] = []
    coverage: CoverageConfig = CoverageConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    map: MapConfig = MapConfig()

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
class Catalogue:
    """The site's things, which any part may know of: sirens, zones, device profiles, signals.

    A part's own settings come to it as its own config section beside this, never the whole
    site file, so no part can come to depend on another's settings."""

    sirens: list[SirenConfig]
    zones: list[ZoneConfig]
    profiles: dict[str, DeviceProfile]
    signals: dict[str, SignalConfig]

    def rated_db_c(self, siren: SirenConfig) -> float | None:
        """The siren's rated sound level: its own, else its profile's; None: neither says."""
        if siren.rated_db_c is not None:
            return siren.rated_db_c
        return self.profiles[siren.profile].spec.rated_db_c


@dataclass(frozen=True)
class Site:
    """A validated configuration together with what it refers to (profiles, signals)."""

    config: SiteConfig
    profiles: dict[str, DeviceProfile]
    signals: dict[str, SignalConfig]
    source: Path | None

    @cached_property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.config.sirens, self.config.zones, self.profiles, self.signals)

    def siren(self, siren_id: str) -> SirenConfig | None:
        return next((s for s in self.config.sirens if s.id == siren_id), None)

    def modbus_profile(self, name: str) -> ModbusProfile:
        profile = self.profiles[name]
        if not isinstance(profile, ModbusProfile):
            raise TypeError(f"profile {name!r} is not a Modbus profile")
        return profile

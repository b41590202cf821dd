"""Where health telemetry goes: the embedded SQLite history and an InfluxDB-protocol server."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from siren_gateway.config.common import StrictModel


class StorageConfig(StrictModel):
    path: str = "siren-gateway.db"
    telemetry_retention_days: float = Field(default=30.0, gt=0)
    # Store a sample per siren at most this often unless something discrete changed (state,
    # faults, flags); 0 stores every poll.
    telemetry_min_interval_s: float = Field(default=60.0, ge=0)


class InfluxConfig(StrictModel):
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

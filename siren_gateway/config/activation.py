"""Limits and timings of activations (who may sound what, how long to wait for proof)."""

from __future__ import annotations

from pydantic import Field

from siren_gateway.config.common import StrictModel


class ActivationConfig(StrictModel):
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
    # and no more per-siren results in all than the second figure; the newest finished one is
    # held whatever its size (a 9·18 test of 6,000 sirens is 6,000 results, ~7 MB).
    # Older ones stay in the database and are read from there when asked for, so memory does
    # not grow with time. The results budget was 5,000: at 2,000 sirens it held the results
    # of two all-siren tests (+2.2 to 3.3 MiB each, measured by the soak) and took 20 to 30
    # minutes of tests every 10 minutes to fill; at 2,000 it is full after the first.
    keep_in_memory: int = Field(default=100, ge=10, le=10000)
    keep_results_in_memory: int = Field(default=2000, ge=10, le=1_000_000)

"""How gateways sharing one PostgreSQL database divide the sirens (docs/cluster.md)."""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from siren_gateway.config.common import StrictModel


class ClusterConfig(StrictModel):
    # A node that has not renewed its leases for this long loses its sirens (and the
    # leadership) to the others; it stops commanding and polling them `fence_margin_s` before.
    lease_s: float = Field(default=6.0, ge=2.0, le=120.0)
    heartbeat_s: float = Field(default=1.0, gt=0.1, le=30.0)
    fence_margin_s: float = Field(default=1.0, ge=0.2, le=30.0)
    # How often an owner publishes its sirens' changed live state, and others read it.
    live_interval_s: float = Field(default=0.5, ge=0.05, le=10.0)
    # Shared by the nodes: they deliver commands and forward requests to each other with it.
    # Better given in the environment (SIREN_CLUSTER_SECRET) than written here.
    secret: str | None = Field(default=None, min_length=16, max_length=200)

    def resolved_secret(self) -> str | None:
        return os.environ.get("SIREN_CLUSTER_SECRET") or self.secret

    @model_validator(mode="after")
    def _check_times(self) -> ClusterConfig:
        if self.heartbeat_s * 2 + self.fence_margin_s > self.lease_s:
            raise ValueError("lease_s must be at least two heartbeats plus the fence margin")
        return self

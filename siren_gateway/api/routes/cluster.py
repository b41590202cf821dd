"""The gateway nodes sharing this site's database: who is alive, who leads, who owns how many
sirens (docs/cluster.md). A single gateway answers as a cluster of one."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter

from siren_gateway.api.deps import GatewayDep, Viewer
from siren_gateway.api.schemas import ClusterOut
from siren_gateway.runtime.clock import iso_utc

router = APIRouter(tags=["cluster"])


@router.get("/cluster", response_model=ClusterOut)
async def cluster(gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    membership = gateway.membership
    if membership is None or gateway.live is None:
        started = gateway.started_at or 0.0
        return {"mode": "single", "node_id": None, "leader_id": None, "lease_s": None,
                "nodes": [{"id": "single", "address": "", "pid": os.getpid(), "leader": True,
                           "alive": True, "sirens_owned": len(gateway.fleet.states),
                           "started_at": iso_utc(started), "last_heartbeat": iso_utc(started),
                           "heartbeat_age_s": 0.0, "this_node": True}]}
    nodes, leader = await membership.nodes()
    for node in nodes:
        node["started_at"] = iso_utc(node["started_at"])
        node["last_heartbeat"] = iso_utc(node["last_heartbeat"])
    return {"mode": "cluster", "node_id": membership.node.id, "leader_id": leader,
            "lease_s": membership.config.lease_s, "nodes": nodes, "live": gateway.live.stats()}

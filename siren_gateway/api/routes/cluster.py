"""The gateway nodes sharing this site's database: who is alive, who leads, who owns how many
sirens (docs/cluster.md). A single gateway answers as a cluster of one."""

from __future__ import annotations

import logging
import os
from typing import Any

import msgspec
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from siren_gateway.api.deps import GatewayDep, Viewer
from siren_gateway.api.schemas import ClusterOut
from siren_gateway.cluster.remote import (
    TOKEN_HEADER,
    ClusterLink,
    decode_command,
    encode_sample,
    token_matches,
)
from siren_gateway.model import LinkError
from siren_gateway.runtime.clock import iso_utc

log = logging.getLogger(__name__)
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


def _cluster_link(siren_id: str, request: Request, gateway: GatewayDep) -> ClusterLink:
    """Only nodes holding the cluster secret may put anything on this node's wire."""
    if gateway.membership is None or not token_matches(request.headers.get(TOKEN_HEADER),
                                                       gateway.cluster_secret):
        raise HTTPException(403, "cluster nodes only")
    link = gateway.links.get(siren_id)
    if not isinstance(link, ClusterLink):
        raise HTTPException(404, f"no siren with id {siren_id!r}")
    return link


@router.post("/cluster/deliver/{siren_id}", status_code=204, include_in_schema=False,
             response_model=None)
async def deliver(siren_id: str, request: Request, gateway: GatewayDep) -> Response:
    """A command for a siren this node owns, sent by the leader (cluster/remote.py)."""
    link = _cluster_link(siren_id, request, gateway)
    try:
        command = decode_command(await request.json())
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPException(400, f"not a command: {exc}") from exc
    try:
        async with gateway.activations.siren_lock(siren_id):
            await link.send_here(command)  # refused unless this node owns the siren
    except LinkError as exc:
        status = 409 if exc.reason == "not_owner" else 502
        return JSONResponse({"reason": exc.reason, "detail": exc.detail}, status_code=status)
    log.info("delivered %s (sequence %d) to %s for the leader", command.kind.value,
             command.sequence, siren_id)
    return Response(status_code=204)


@router.post("/cluster/read/{siren_id}", include_in_schema=False, response_model=None)
async def read(siren_id: str, request: Request, gateway: GatewayDep) -> Response:
    """The leader's read-back of a siren this node owns: a poll that starts after every
    command this node was asked to deliver before it (the siren's lock is taken in turn) and
    after any poll already on the wire, so it shows whether those commands were carried out."""
    _cluster_link(siren_id, request, gateway)
    if not gateway.membership or not gateway.membership.owns(siren_id):
        return JSONResponse({"reason": "not_owner", "detail": "this node does not own the "
                             "siren"}, status_code=409)
    async with gateway.activations.siren_lock(siren_id):
        outcome = await gateway.poller.poll_now(siren_id)
    if isinstance(outcome, LinkError):
        return JSONResponse({"reason": outcome.reason, "detail": outcome.detail},
                            status_code=502)
    # (msgspec: a float register may hold NaN, which JSONResponse refuses; it goes as null)
    return Response(msgspec.json.encode({"sample": encode_sample(outcome)}),
                    media_type="application/json")

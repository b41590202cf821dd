"""A cluster node's links: its own sirens' commands and polls go on the wire here only while
it owns them (the fence); a command for a siren another node owns goes through the owner,
which puts it on the wire with its own link if it still owns the siren. The owner's answer
keeps the link's meaning: sent, refused by the device, or a LinkError whose reason says
whether it may have gone out (timeout) or certainly did not (unreachable, not_owner), so the
engine's read-back rules hold across nodes as on one.

A read-back (which command did the siren carry out?) is asked of the owner too, never read
from the mirrored picture: a mirrored status may come from a poll that was on the wire before
the command reached the siren, and read as "not taken" it would send the command twice.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from siren_gateway.cluster.membership import Membership
from siren_gateway.links.base import SirenLink
from siren_gateway.model import Command, CommandKind, LinkError, Sample

if TYPE_CHECKING:  # httpx is loaded by cluster nodes only (~6 MiB resident with its extras)
    import httpx

log = logging.getLogger(__name__)
TOKEN_HEADER = "x-siren-cluster-token"
CLIENT_HEADER = "x-siren-forwarded-for"  # the client a follower forwarded a request for


def encode_command(command: Command) -> dict[str, Any]:
    return {"kind": command.kind.value, "signal": command.signal,
            "start_at": command.start_at.isoformat() if command.start_at else None,
            "clock": command.clock.isoformat() if command.clock else None,
            "sequence": command.sequence, "command_id": command.command_id}


def decode_command(body: dict[str, Any]) -> Command:
    return Command(CommandKind(body["kind"]), signal=body.get("signal"),
                   start_at=datetime.fromisoformat(body["start_at"]) if body.get("start_at")
                   else None,
                   clock=datetime.fromisoformat(body["clock"]) if body.get("clock") else None,
                   sequence=int(body.get("sequence", 0)), command_id=str(body["command_id"]))


def encode_sample(sample: Sample) -> dict[str, Any]:
    return {"at": sample.received_at.timestamp(),
            "device_time": sample.device_time.timestamp() if sample.device_time else None,
            "values": sample.values, "faults": sorted(sample.faults)}


def decode_sample(siren_id: str, raw: dict[str, Any]) -> Sample:
    device_time = raw.get("device_time")
    return Sample(siren_id, datetime.fromtimestamp(float(raw["at"]), UTC), raw["values"],
                  frozenset(raw["faults"]),
                  None if device_time is None else datetime.fromtimestamp(device_time, UTC))


def token_matches(given: str | None, secret: str | None) -> bool:
    return bool(given and secret and hmac.compare_digest(given.encode(), secret.encode()))


class NodeClient:
    """The HTTP client a node talks to the others with (one connection pool, closed at stop)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def __call__(self) -> httpx.AsyncClient:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
        return self._client

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class ClusterLink:
    """A siren's link on a cluster node: its own link while this node owns the siren, else a
    request to its owner.

    The fence: every poll and command goes through here, so no path (an activation, an
    operator command, a read-back, a delivery for the leader) reaches a siren another node
    owns, and a fenced node (cluster/membership.py) stops at once. Refused before anything is
    put on the wire, so the caller knows it was not sent."""

    def __init__(self, local: SirenLink, membership: Membership, secret: str,
                 client: Callable[[], httpx.AsyncClient]) -> None:
        self.local = local
        self.membership = membership
        self.secret = secret
        self._client = client
        self.siren_id = local.siren_id
        self.polled = local.polled
        self.sequence_readback = local.sequence_readback
        self.idempotent_resend = local.idempotent_resend

    @property
    def timeout_s(self) -> float:
        return self.local.timeout_s

    def _check_owned(self) -> None:
        if not self.membership.owns(self.siren_id):
            raise LinkError("not_owner", "another gateway node owns this siren (not sent)")

    async def poll(self) -> Sample:
        self._check_owned()
        return await self.local.poll()

    async def send_here(self, command: Command) -> None:
        """Put the command on the wire from this node, which must own the siren."""
        self._check_owned()
        await self.local.send(command)

    def progress(self, command_id: str) -> str | None:
        return self.local.progress(command_id) if self.membership.owns(self.siren_id) else None

    async def send(self, command: Command) -> None:
        if self.membership.owns(self.siren_id):
            await self.send_here(command)
            return
        await self._ask_owner("deliver", encode_command(command))

    async def poll_via_owner(self) -> Sample:
        """A status from a poll the owner starts after this call (after any command it is
        still putting on the wire for this siren): what a read-back may trust."""
        if self.membership.owns(self.siren_id):
            # (gained since the caller looked: the poller is the only one that polls a siren,
            # so the caller's next look goes through it; nothing was put on the wire here)
            raise LinkError("not_owner", "this node owns the siren now: ask its poller")
        body = await self._ask_owner("read", {})
        try:
            return decode_sample(self.siren_id, body["sample"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LinkError("timeout", f"owner's answer was not a status: {exc!r}") from exc

    async def _ask_owner(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        owner = self.membership.owner_address(self.siren_id)
        if owner is None:
            raise LinkError("no_owner", "no live node owns this siren now (not sent)")
        node, address = owner
        import httpx

        # The owner may take the device's whole timeout (and an MQTT acknowledgement's), and
        # wait for a command or a poll already on the wire.
        timeout = httpx.Timeout(self.local.timeout_s * 3 + 2.0, connect=2.0)
        try:
            response = await self._client().post(
                f"{address}/api/cluster/{what}/{self.siren_id}", json=body,
                headers={TOKEN_HEADER: self.secret}, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise LinkError("unreachable", f"owner node {node} refused the connection "
                            f"(not sent): {exc}") from exc
        except httpx.HTTPError as exc:  # sent, and no answer: it may have gone out
            raise LinkError("timeout", f"owner node {node} did not answer: {exc!r}") from exc
        if response.status_code == 204:
            return {}
        try:
            answer = response.json()
            if response.status_code == 200 and isinstance(answer, dict):
                return answer
            reason, detail = str(answer["reason"]), str(answer.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            reason, detail = "timeout", f"owner node {node} answered {response.status_code}"
        raise LinkError(reason, f"via node {node}: {detail}")

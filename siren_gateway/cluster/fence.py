"""A siren's link as a cluster node sees it: usable only while this node owns the siren.

Every command and poll goes through here, so no path (an activation, an operator command, a
read-back) can reach a siren another node owns, and a fenced node (cluster/membership.py)
stops at once. Refused before anything is put on the wire, so the caller knows it was not sent.
"""

from __future__ import annotations

from collections.abc import Callable

from siren_gateway.links.base import SirenLink
from siren_gateway.model import Command, LinkError, Sample


class FencedLink:
    def __init__(self, link: SirenLink, owns: Callable[[str], bool]) -> None:
        self.link = link
        self.owns = owns
        self.siren_id = link.siren_id
        self.polled = link.polled
        self.sequence_readback = link.sequence_readback
        self.idempotent_resend = link.idempotent_resend
        self.refused = 0

    @property
    def timeout_s(self) -> float:
        return self.link.timeout_s

    def _check(self) -> None:
        if not self.owns(self.siren_id):
            self.refused += 1
            raise LinkError("not_owner", "another gateway node owns this siren (not sent)")

    async def poll(self) -> Sample:
        self._check()
        return await self.link.poll()

    async def send(self, command: Command) -> None:
        self._check()
        await self.link.send(command)

    def progress(self, command_id: str) -> str | None:
        return self.link.progress(command_id)

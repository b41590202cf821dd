"""Maintenance commands an operator sends to sirens: reset latched faults, arm, disarm.

Each is confirmed from the device's own status after it was sent, never assumed: a reset is
confirmed when no latched fault is reported any more (a part that is still broken latches
again, and the answer says so), arm and disarm when the controller reports itself armed or
disarmed. They make no sound, so inhibited and disarmed sirens are commanded too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from siren_gateway.activation.engine import ActivationEngine
from siren_gateway.activation.model import Targets
from siren_gateway.config.activation import ActivationConfig
from siren_gateway.errors import Invalid, Refused
from siren_gateway.links.base import SirenLink
from siren_gateway.live.fleet import Fleet
from siren_gateway.metrics import Instruments
from siren_gateway.model import Command, CommandKind, LinkError
from siren_gateway.profiles.modbus import DeviceProfile
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal

OPERATOR_COMMANDS = (CommandKind.RESET_FAULTS, CommandKind.ARM, CommandKind.DISARM)


@dataclass
class CommandOutcome:
    siren_id: str
    result: str  # confirmed, not_confirmed, failed, refused, unsupported
    reason: str
    confirm_s: float | None = None
    # Sent only once this activation's proof was in: see ActivationEngine.between_proofs.
    after_activation: int | None = None


class OperatorCommands:
    def __init__(self, profiles: Mapping[str, DeviceProfile], config: ActivationConfig,
                 fleet: Fleet, links: dict[str, SirenLink], audit: AuditLog,
                 engine: ActivationEngine, instruments: Instruments | None = None) -> None:
        self.profiles = profiles
        self.instruments = instruments or engine.instruments
        self.fleet = fleet
        self.links = links
        self.audit = audit
        self.engine = engine
        self.confirm_timeout_s = config.confirm_timeout_s
        self.poll_interval_s = config.confirm_poll_interval_s

    async def run(self, who: Principal, kind: CommandKind, targets: Targets,
                  comment: str) -> dict[str, Any]:
        if kind not in OPERATOR_COMMANDS:
            raise Invalid(f"{kind.value} is not an operator command")
        try:
            active, excluded = self.engine.resolve(targets)
        except Refused as exc:
            await self.audit.record(who, f"sirens.{kind.value}", f"refused: {exc.message}",
                                    targets=asdict(targets), comment=comment)
            raise
        sirens = active + list(excluded)
        outcomes = await asyncio.gather(*(self._one(siren_id, kind) for siren_id in sirens))
        counts: dict[str, int] = {}
        for outcome in outcomes:
            counts[outcome.result] = counts.get(outcome.result, 0) + 1
        await self.audit.record(who, f"sirens.{kind.value}",
                                "confirmed" if counts.get("confirmed") == len(sirens)
                                else "not confirmed for some", targets=asdict(targets),
                                comment=comment, counts=counts,
                                sirens={o.siren_id: o.result for o in outcomes})
        return {"command": kind.value, "counts": counts,
                "sirens": [asdict(o) for o in outcomes]}

    async def _one(self, siren_id: str, kind: CommandKind) -> CommandOutcome:
        link = self.links[siren_id]
        profile = self.profiles[self.fleet.states[siren_id].config.profile]
        if not profile.supports(kind):
            return CommandOutcome(siren_id, "unsupported",
                                  f"model {profile.name} has no {kind.value} command")
        waited_for = None
        try:
            async with self.engine.between_proofs(siren_id) as waited_for:
                sent_at = self.engine.clock.now()
                with self.instruments.command(kind.value):
                    await link.send(Command(kind))
        except LinkError as exc:
            result = "refused" if exc.reason == "rejected" else "failed"
            return CommandOutcome(siren_id, result, str(exc), after_activation=waited_for)
        outcome = await self._confirm(link, kind, sent_at)
        outcome.after_activation = waited_for
        return outcome

    async def _confirm(self, link: SirenLink, kind: CommandKind, sent_at: float
                       ) -> CommandOutcome:
        siren_id = link.siren_id
        deadline = sent_at + self.confirm_timeout_s
        profile = self.profiles[self.fleet.states[siren_id].config.profile]
        latched = profile.latched_faults
        last = "no status since the command"
        while True:
            sample, why_not = await self.engine.status.look(link, sent_at)
            if sample is None and link.polled:
                last = why_not
            if sample is not None:
                if kind is CommandKind.RESET_FAULTS:
                    remaining = sample.faults & latched
                    if not remaining:
                        return CommandOutcome(siren_id, "confirmed", "no latched fault reported",
                                              round(self.engine.clock.now() - sent_at, 3))
                    last = (f"still reports {', '.join(sorted(remaining))}: the part is "
                            "probably still broken")
                else:
                    armed = sample.values.get("armed")
                    wanted = kind is CommandKind.ARM
                    if armed is wanted:
                        return CommandOutcome(siren_id, "confirmed",
                                              "reports armed" if wanted else "reports disarmed",
                                              round(self.engine.clock.now() - sent_at, 3))
                    last = ("the controller does not report whether it is armed"
                            if armed is None else f"still reports armed={armed}")
            remaining_s = deadline - self.engine.clock.now()
            if remaining_s <= 0:
                return CommandOutcome(siren_id, "not_confirmed", last)
            await self.engine.status.pause(link, self.poll_interval_s, remaining_s)

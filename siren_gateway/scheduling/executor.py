"""The executor the gateway uses: a plan's steps are activations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from siren_gateway.activation.engine import ActivationEngine
from siren_gateway.activation.model import ActivationRequest, Targets
from siren_gateway.config.plans import PlanConfig
from siren_gateway.errors import Refused
from siren_gateway.scheduling.model import StepRefused
from siren_gateway.security.auth import Principal


class ActivationExecutor:
    """A step is an activation requested under the step's tag, which is how a restart finds it."""

    def __init__(self, engine: ActivationEngine,
                 principal_for: Callable[[str], Principal]) -> None:
        self.engine = engine
        self.principal_for = principal_for

    async def start(self, plan: PlanConfig, occurrence_id: int, step: int, start_at: float,
                    tag: str) -> int:
        spec = plan.steps[step]
        request = ActivationRequest(
            Targets(tuple(plan.targets.sirens), tuple(plan.targets.zones), plan.targets.all),
            plan.klass, action=spec.action, signal=spec.signal,
            start_at=datetime.fromtimestamp(start_at, UTC), busy_sirens="skip")
        try:
            activation = await self.engine.activate(self.principal_for(tag), request)
        except Refused as exc:
            raise StepRefused(exc.message) from None
        return int(activation.id)

    async def find(self, tag: str) -> int | None:
        return await self.engine.find_by_requester(tag)

    async def finished(self, activation_ids: list[int]) -> bool:
        for activation_id in activation_ids:
            activation = self.engine.activations.get(activation_id)
            if activation is not None and activation.state == "running":
                return False
        return True

    async def cancel(self, activation_ids: list[int]) -> None:
        for activation_id in activation_ids:
            activation = self.engine.activations.get(activation_id)
            if activation is not None and activation.state == "running":
                await self.engine.cancel(self.principal_for("schedule:cancel"), activation_id)

    async def reports(self, activation_ids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for activation_id in activation_ids:
            activation = await self.engine.get(activation_id)
            if activation is not None:
                out[activation_id] = activation.report()
        return out

"""Warning signals: named patterns of sound (steady, wailing, all-clear), by step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from siren_gateway.config.common import Identifier, StrictModel


class SignalStep(StrictModel):
    on_s: float = Field(gt=0, le=3600)
    off_s: float = Field(default=0, ge=0, le=3600)
    repeat: int = Field(default=1, ge=1, le=1000)


class SignalConfig(StrictModel):
    id: Identifier
    name_en: str
    name_zh: str
    tone: Literal["steady", "wailing"]
    steps: list[SignalStep] = Field(min_length=1)

    @property
    def duration_s(self) -> float:
        """Time from the first onset until the pattern ends (a trailing pause is not sounding)."""
        total = sum((s.on_s + s.off_s) * s.repeat for s in self.steps)
        return total - self.steps[-1].off_s

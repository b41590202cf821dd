"""The live picture of every siren: reachability, latest status, active faults.

Only the links' owners (the poller, the MQTT hub) write here; activations ask the poller for
fresh answers; the API reads. Every change of reachability or of the fault set is published once
on the bus, at the moment it is observed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from siren_gateway.config.links import MqttBrokerConfig, MqttLink
from siren_gateway.config.site import Catalogue, PollingConfig, SirenConfig
from siren_gateway.live.bus import Bus, FaultsChanged, SampleReceived, StatusChanged
from siren_gateway.model import LinkError, Sample, utc_now
from siren_gateway.profiles.modbus import DeviceProfile
from siren_gateway.profiles.mqtt import MqttProfile
from siren_gateway.runtime.clock import Clock, SystemClock, utc
from siren_gateway.runtime.logs import RateLimitedLog

log = logging.getLogger(__name__)
# Reachability changes at INFO: up to 20 lines per 10 s for each new state, then a count.
_transitions = RateLimitedLog(log, period_s=10.0, burst=20)


class Reachability(enum.StrEnum):
    UNKNOWN = "unknown"  # not polled yet
    ONLINE = "online"  # the last poll answered
    STALE = "stale"  # answered before, but nothing fresh for a while
    OFFLINE = "offline"  # several polls in a row went unanswered


# Faults that leave a siren able to do its job (shown as "degraded", not "fault").
MINOR_FAULTS = frozenset({"door_open", "battery_box_open", "charger_fault"})
STATUS_CLASSES = ("healthy", "degraded", "fault", "offline", "sounding", "inhibited")


@dataclass(slots=True)  # thousands of them, read on every sweep: no per-instance dict
class SirenState:
    config: SirenConfig
    sounding_current_threshold: float | None
    reachability: Reachability = Reachability.UNKNOWN
    since: datetime = field(default_factory=utc_now)
    last_seen: datetime | None = None
    last_attempt: datetime | None = None
    sample: Sample | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    polls_ok: int = 0
    polls_failed: int = 0
    # Monotonic time of the last answer and the age that makes it stale: the sweep runs over the
    # whole fleet every second, so it compares floats rather than datetimes.
    last_seen_mono: float = 0.0
    stale_after_s: float = 0.0
    # Reporting (MQTT) sirens are never asked, so silence is the only sign: offline after this
    # long without a message. 0 for polled sirens, whose failed polls say it.
    offline_after_s: float = 0.0
    # The sweep has nothing to decide while the silence is shorter than this.
    quiet_s: float = 0.0

    @property
    def faults(self) -> frozenset[str]:
        return self.sample.faults if self.sample else frozenset()

    @property
    def last_known_state(self) -> str:
        value = self.sample.values.get("state") if self.sample else None
        return str(value) if value is not None else "unknown"

    @property
    def state(self) -> str:
        """The controller's activity (idle, sounding, ...) now; unknown unless it is answering.

        A siren that stopped answering may be sounding on battery or may be dead: showing its
        last answer as the present would be a lie in the one case that matters.
        """
        return self.last_known_state if self.reachability is Reachability.ONLINE else "unknown"

    @property
    def status_class(self) -> str:
        """One word for the control room's map and table (STATUS_CLASSES), worst first:
        out of service (inhibited in the site file, or disarmed), not answering, sounding, a
        fault, a minor fault or a late answer, else healthy."""
        if self.config.inhibited or (self.sample is not None
                                     and self.sample.values.get("armed") is False):
            return "inhibited"
        if self.reachability is Reachability.OFFLINE or self.reachability is Reachability.UNKNOWN:
            return "offline"
        if self.state == "sounding" or self.horn_on:
            return "sounding"
        faults = self.faults
        if faults - MINOR_FAULTS:
            return "fault"
        if faults or self.reachability is Reachability.STALE:
            return "degraded"
        return "healthy"

    @property
    def horn_on(self) -> bool:
        """Sound is physically coming out: the device reports sounding current above threshold."""
        if (self.sample is None or self.sounding_current_threshold is None
                or self.reachability is not Reachability.ONLINE):
            return False
        current = self.sample.values.get("sounding_current")
        return isinstance(current, int | float) and current >= self.sounding_current_threshold

    def as_dict(self) -> dict[str, Any]:
        cfg = self.config
        sample = self.sample
        return {
            "id": cfg.id,
            "name": cfg.name,
            "zones": list(cfg.zones),
            "location": {"lat": cfg.location.lat, "lon": cfg.location.lon},
            "profile": cfg.profile,
            "inhibited": cfg.inhibited,
            "online": self.reachability is Reachability.ONLINE,
            "reachability": self.reachability.value,
            "reachability_since": self.since.isoformat(),
            "state": self.state,
            "last_known_state": self.last_known_state,
            "sounding": self.state == "sounding",
            "horn_on": self.horn_on,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "faults": sorted(self.faults),
            "telemetry": dict(sample.values) if sample else None,
            "device_time": sample.device_time.isoformat() if sample and sample.device_time
            else None,
            # Controller clock minus gateway clock at the last answer (1 s resolution + latency).
            "clock_skew_s": round(sample.device_time.timestamp() - sample.received_at.timestamp(),
                                  1) if sample and sample.device_time else None,
            "polls": {"ok": self.polls_ok, "failed": self.polls_failed},
            "status_class": self.status_class,
        }


_ONLINE = Reachability.ONLINE


def reporting_interval(profiles: Mapping[str, DeviceProfile], siren: SirenConfig) -> float:
    """How often fresh status is expected: the poll interval, or an MQTT device's report period."""
    link = siren.link
    if isinstance(link, MqttLink):
        if link.telemetry_interval_s is not None:
            return link.telemetry_interval_s
        profile = profiles[siren.profile]
        if isinstance(profile, MqttProfile):
            return profile.spec.telemetry_interval_s
    return siren.poll_interval_s


class Fleet:
    def __init__(self, catalogue: Catalogue, polling: PollingConfig,
                 mqtt: MqttBrokerConfig | None, bus: Bus, clock: Clock | None = None) -> None:
        self.bus = bus
        self.clock = clock or SystemClock()
        self._monotonic = self.clock.monotonic  # bound once: record_sample is the hot path
        self.polling = polling
        self.states: dict[str, SirenState] = {}
        started = self._monotonic()
        for siren in catalogue.sirens:
            interval = reporting_interval(catalogue.profiles, siren)
            state = SirenState(siren,
                               catalogue.profiles[siren.profile].spec.sounding_current_threshold,
                               stale_after_s=interval * self.polling.stale_after_intervals)
            if isinstance(siren.link, MqttLink) and mqtt is not None:
                state.offline_after_s = interval * mqtt.offline_after_intervals
                state.last_seen_mono = started  # "never reported" counts from our start
            state.quiet_s = min(state.stale_after_s, state.offline_after_s or state.stale_after_s)
            self.states[siren.id] = state
        # Activations waiting for a siren's next report (earliest truthful confirmation).
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def wait_for_news(self, siren_id: str, timeout_s: float) -> None:
        """Return at the siren's next sample (or other news), or after `timeout_s`."""
        if timeout_s <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(siren_id, []).append(future)
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(siren_id)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[siren_id]

    def notify(self, siren_id: str) -> None:
        """Wake whoever waits on this siren (a sample, or an MQTT progress acknowledgement)."""
        waiting = self._waiters.pop(siren_id, None)
        for future in waiting or ():
            if not future.done():
                future.set_result(None)

    def get(self, siren_id: str) -> SirenState | None:
        return self.states.get(siren_id)

    def public(self) -> list[dict[str, Any]]:
        """Every siren's live state, as the API shows it."""
        return [state.as_dict() for state in self.states.values()]

    def _set_reachability(self, state: SirenState, new: Reachability, at: datetime,
                          reason: str) -> None:
        if state.reachability is new:
            return
        old, state.reachability, state.since = state.reachability, new, at
        self.bus.publish(StatusChanged(state.config.id, old.value, new.value, at, reason))
        _transitions.log(logging.INFO, new.value, "siren %s %s -> %s (%s)", state.config.id,
                         old.value, new.value, reason)

    def record_sample(self, sample: Sample) -> None:
        state = self.states[sample.siren_id]
        before = state.faults
        state.sample = sample
        state.last_seen = state.last_attempt = sample.received_at
        state.last_seen_mono = self._monotonic()
        state.consecutive_failures = 0
        state.last_error = None
        state.polls_ok += 1
        if state.reachability is not _ONLINE:
            self._set_reachability(state, _ONLINE, sample.received_at, "answered")
        if sample.faults is not before and sample.faults != before:
            self.bus.publish(FaultsChanged(sample.siren_id, sample.faults - before,
                                           before - sample.faults, sample.faults,
                                           sample.received_at))
        self.bus.publish(SampleReceived(sample))
        if self._waiters:
            self.notify(sample.siren_id)

    def record_failure(self, siren_id: str, error: LinkError) -> None:
        state = self.states[siren_id]
        now = utc(self.clock)
        state.last_attempt = now
        state.consecutive_failures += 1
        state.polls_failed += 1
        state.last_error = str(error)
        if state.consecutive_failures >= self.polling.offline_after_failures:
            self._set_reachability(state, Reachability.OFFLINE, now,
                                   f"{state.consecutive_failures} polls failed: {error.reason}")
        elif (state.reachability is Reachability.ONLINE
              and self._monotonic() - state.last_seen_mono > state.stale_after_s):
            self._set_reachability(state, Reachability.STALE, now, "no fresh status")

    def mirror(self, siren_id: str, reachability: Reachability, since: datetime | None,
               sample: Sample | None, last_seen: datetime | None, last_attempt: datetime | None,
               last_error: str | None, failures: int, polls_ok: int, polls_failed: int,
               reason: str) -> None:
        """A siren another node owns, as that node sees it (cluster/live.py). Its changes of
        reachability and faults are published like local ones; its samples are not (their
        owner stores them)."""
        state = self.states[siren_id]
        before, previous = state.faults, state.sample
        state.sample = sample
        state.last_seen, state.last_attempt = last_seen, last_attempt
        state.last_error, state.consecutive_failures = last_error, failures
        state.polls_ok, state.polls_failed = polls_ok, polls_failed
        if last_seen is not None:  # its age on this node's clock, for the staleness sweep
            age = max(0.0, utc(self.clock).timestamp() - last_seen.timestamp())
            state.last_seen_mono = self._monotonic() - age
        self._set_reachability(state, reachability, since or utc(self.clock), reason)
        faults = state.faults
        if faults != before:
            self.bus.publish(FaultsChanged(siren_id, faults - before, before - faults, faults,
                                           sample.received_at if sample else utc(self.clock)))
        if sample is not None and (previous is None
                                   or sample.received_at != previous.received_at):
            self.bus.publish(SampleReceived(sample, mirrored=True))
        if self._waiters:
            self.notify(siren_id)

    def mark_offline(self, siren_id: str, reason: str) -> None:
        """The device said so itself (MQTT state topic or its last will)."""
        state = self.states[siren_id]
        self._set_reachability(state, Reachability.OFFLINE, utc(self.clock), reason)

    def sweep(self) -> None:
        """Catch sirens whose polls hang rather than fail, and reporting sirens that fell
        silent (called every second over the whole fleet, so the common case is cheap)."""
        now = self._monotonic()
        online, stale = Reachability.ONLINE, Reachability.STALE
        for state in self.states.values():
            # The common case first, in one comparison: it answered recently enough.
            if now - state.last_seen_mono <= state.quiet_s:
                continue
            reachability = state.reachability
            if reachability is online or reachability is stale:
                silent = now - state.last_seen_mono
                if state.offline_after_s and silent > state.offline_after_s:
                    self._set_reachability(state, Reachability.OFFLINE, utc(self.clock),
                                           f"silent for {silent:.0f} s")
                elif reachability is online:
                    self._set_reachability(state, stale, utc(self.clock), "no fresh status")
            elif (reachability is Reachability.UNKNOWN and state.offline_after_s
                  and now - state.last_seen_mono > state.offline_after_s):
                self._set_reachability(state, Reachability.OFFLINE, utc(self.clock),
                                       "never reported since the gateway started")

    def counts(self) -> dict[str, int]:
        out = {r.value: 0 for r in Reachability}
        for state in self.states.values():
            out[state.reachability.value] += 1
        out["with_faults"] = sum(1 for s in self.states.values() if s.faults)
        return out

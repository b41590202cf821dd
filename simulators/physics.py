"""The physical behaviour of one simulated siren controller, independent of any protocol.

Time is passed in (wall-clock seconds) rather than read, so tests can drive it, and the state is
advanced lazily whenever someone looks. The Modbus and MQTT simulators present this same model
through the device profile, and the control API reports it as the truth the gateway is judged by.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from siren_gateway.config.signals import SignalConfig
from siren_gateway.model import Command, CommandKind, Value

AMPLIFIERS = 4


@dataclass
class PhysicsParams:
    battery_full_v: float = 27.3  # 24 V lead-acid bank at float charge
    battery_empty_v: float = 20.0
    dc_ok_min_v: float = 21.5
    idle_drain_v_per_h: float = 0.6  # on battery, controller and radio only
    sounding_drain_v_per_s: float = 0.01  # while the horn is on, amplifiers at full power
    charge_v_per_h: float = 1.5
    amplifier_current_a: float = 3.5  # supply current per working amplifier while sounding
    silent_test_s: float = 6.0
    base_temperature_c: float = 24.0
    overheat_temperature_c: float = 75.0
    link_quality_dbm: int = -67


@dataclass
class CommsFaults:
    """Faults of the communication path, applied by the protocol servers, not the physics."""

    no_response: bool = False
    slow_s: float = 0.0
    exception_code: int = 0  # a Modbus exception code to answer with, 0 = none
    garbage: bool = False
    drop_connection: bool = False
    # MQTT controllers
    silent_disconnect: bool = False  # disconnect cleanly (the broker drops the will), stay away
    vanish: bool = False  # the link dies abruptly: the broker publishes the last will
    malformed_json: bool = False  # telemetry goes out as broken JSON
    duplicate_acks: bool = False
    late_acks_s: float = 0.0  # every acknowledgement held back this long
    never_ack: bool = False  # commands are carried out, never acknowledged
    # The command is carried out but its reply is lost: a Modbus write gets no response, an
    # MQTT command no acknowledgement (both protocols' worst case for exactly-once delivery).
    lost_reply: bool = False


@dataclass
class Onset:
    """One real start of sound: the truth against which proof of sounding is checked."""

    signal: str
    started_at: float  # wall-clock seconds when the horn first sounded
    device_time: float  # the device's (possibly drifting) clock at that moment
    local: bool = False  # started at the pole, not by a command
    sequence: int = 0  # the sequence of the command that started it (0: local or none)


@dataclass
class _Activity:
    kind: str  # "sound" or "silent_test"
    signal: str | None
    start: float  # wall-clock start (may be in the future: pending)
    duration: float
    local: bool = False
    onset_recorded: bool = False
    sequence: int = 0


@dataclass
class SimulatedSiren:
    siren_id: str
    signals: dict[str, SignalConfig]
    now: float
    params: PhysicsParams = field(default_factory=PhysicsParams)
    firmware: str = "SG-2.4.1"

    mains_present: bool = True
    battery_v: float = 0.0
    amplifier_broken: list[bool] = field(default_factory=lambda: [False] * AMPLIFIERS)
    amplifier_latched: list[bool] = field(default_factory=lambda: [False] * AMPLIFIERS)
    driver_broken: bool = False
    driver_latched: bool = False
    cabinet_door_open: bool = False
    battery_box_open: bool = False
    sabotage_latched: bool = False
    local_activation_latched: bool = False
    overheat: bool = False
    armed: bool = True
    clock_offset_s: float = 0.0
    clock_drift_ppm: float = 0.0
    clock_reference: float = 0.0
    last_result: str = "none"
    activation_counter: int = 0
    last_command_sequence: int = 0
    commands_received: int = 0
    comms: CommsFaults = field(default_factory=CommsFaults)
    onsets: deque[Onset] = field(default_factory=lambda: deque(maxlen=100))
    _activity: _Activity | None = None
    _updated: float = 0.0

    def __post_init__(self) -> None:
        if self.battery_v == 0.0:
            self.battery_v = self.params.battery_full_v
        self._updated = self.now
        self.clock_reference = self.now

    # -- time --------------------------------------------------------------------------------

    def device_time(self, now: float) -> float:
        return now + self.clock_offset_s + self.clock_drift_ppm * 1e-6 * (now - self.clock_reference)

    def set_clock(self, device_seconds: float, now: float) -> None:
        self.clock_offset_s = device_seconds - now
        self.clock_reference = now

    def set_clock_error(self, offset_s: float, drift_ppm: float, now: float) -> None:
        self.advance(now)
        self.clock_offset_s, self.clock_drift_ppm, self.clock_reference = offset_s, drift_ppm, now

    # -- the horn ----------------------------------------------------------------------------

    def _pattern(self, signal: str) -> list[tuple[float, float]]:
        cycles: list[tuple[float, float]] = []
        for step in self.signals[signal].steps:
            cycles += [(step.on_s, step.off_s)] * step.repeat
        return cycles

    def _horn_on_between(self, a: float, b: float) -> float:
        """Seconds the horn was on in [a, b) of wall-clock time."""
        act = self._activity
        if act is None or act.kind != "sound" or act.signal is None or b <= act.start:
            return 0.0
        total, t = 0.0, act.start
        for on, off in self._pattern(act.signal):
            lo, hi = max(a, t), min(b, t + on)
            if hi > lo:
                total += hi - lo
            t += on + off
            if t >= b:
                break
        return total

    def horn_on(self, now: float) -> bool:
        return self._horn_on_between(now, now + 1e-6) > 0

    def _working_amplifiers(self) -> int:
        if self.driver_broken:
            return 0
        return sum(not broken for broken in self.amplifier_broken)

    # -- evolution ---------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Bring battery, activities and latches up to `now`."""
        if now <= self._updated:
            return
        start, self._updated = self._updated, now
        act = self._activity
        if act is not None and act.kind == "sound" and not act.onset_recorded and now >= act.start:
            act.onset_recorded = True
            if self._working_amplifiers() > 0:
                self.onsets.append(Onset(act.signal or "", act.start,
                                         self.device_time(act.start), act.local, act.sequence))
        p = self.params
        sounding_s = self._horn_on_between(start, now)
        if sounding_s and self._working_amplifiers():
            self.battery_v -= p.sounding_drain_v_per_s * sounding_s
        hours = (now - start) / 3600
        if self.mains_present:
            self.battery_v = min(p.battery_full_v, self.battery_v + p.charge_v_per_h * hours)
        else:
            self.battery_v -= p.idle_drain_v_per_h * hours
        self.battery_v = max(p.battery_empty_v, self.battery_v)
        if act is not None and now >= act.start + act.duration:
            self._finish(act)

    def _finish(self, act: _Activity) -> None:
        healthy = self._working_amplifiers() == AMPLIFIERS
        if act.kind == "sound":
            self.activation_counter += 1
            self.last_result = "completed" if self._working_amplifiers() > 0 else "failed"
        else:
            self.last_result = "completed" if healthy else "failed"
        self._activity = None

    def _start(self, kind: str, signal: str | None, start: float, local: bool = False,
               sequence: int = 0) -> None:
        duration = self.signals[signal].duration_s if signal else self.params.silent_test_s
        self._activity = _Activity(kind, signal, start, duration, local, sequence=sequence)
        self._latch_broken_parts()

    def _latch_broken_parts(self) -> None:
        for i, broken in enumerate(self.amplifier_broken):
            self.amplifier_latched[i] = self.amplifier_latched[i] or broken
        self.driver_latched = self.driver_latched or self.driver_broken

    def apply(self, command: Command, now: float) -> bool:
        """Carry out a command; False if the controller refuses it."""
        self.advance(now)
        self.commands_received += 1
        kind = command.kind
        if kind is CommandKind.SOUND:
            if command.signal not in self.signals or not self.armed:
                return False  # unknown signal, or disarmed for maintenance
            start = now
            if command.start_at is not None:
                # The start time is on the device's clock: wait until that clock reads it.
                start = max(now, now + command.start_at.timestamp() - self.device_time(now))
            if self._activity is not None and self._activity.kind == "sound":
                self.last_result = "stopped"
            self._start("sound", command.signal, start, sequence=command.sequence)
        elif kind is CommandKind.STOP:
            if self._activity is not None:
                self._activity = None
                self.last_result = "stopped"
        elif kind is CommandKind.RESET_FAULTS:
            self.amplifier_latched = list(self.amplifier_broken)
            self.driver_latched = self.driver_broken
            self.sabotage_latched = False
            self.local_activation_latched = False
        elif kind is CommandKind.SILENT_TEST:
            if self._activity is not None:
                return False
            self._start("silent_test", None, now, sequence=command.sequence)
        elif kind is CommandKind.SET_CLOCK and command.clock is not None:
            self.set_clock(command.clock.timestamp(), now)
        elif kind is CommandKind.ARM:
            self.armed = True
        elif kind is CommandKind.DISARM:
            self.armed = False
        self.last_command_sequence = command.sequence
        self.advance(now + 1e-9)  # record an immediate onset
        return True

    # -- fault injection ---------------------------------------------------------------------

    def inject(self, fault: str, active: bool, now: float, **options: Any) -> None:
        self.advance(now)
        if fault == "mains_loss":
            self.mains_present = not active
        elif fault == "amplifier_fault":
            index = int(options.get("amplifier", 1)) - 1
            if not 0 <= index < AMPLIFIERS:
                raise ValueError("amplifier runs from 1 to 4")
            self.amplifier_broken[index] = active
            if active:
                self.amplifier_latched[index] = True
        elif fault == "all_amplifiers_fault":
            self.amplifier_broken = [active] * AMPLIFIERS
            if active:
                self.amplifier_latched = [True] * AMPLIFIERS
        elif fault == "driver_fault":
            self.driver_broken = active
            self.driver_latched = self.driver_latched or active
        elif fault == "door_open":
            self.cabinet_door_open = active
        elif fault == "battery_box_open":
            self.battery_box_open = active
        elif fault == "sabotage":
            self.sabotage_latched = self.sabotage_latched or active
        elif fault == "overheat":
            self.overheat = active
        elif fault == "local_activation":
            if active:
                self.local_activation_latched = True
                self._start("sound", str(options.get("signal", "air_raid")), now, local=True)
                self.advance(now + 1e-9)
        elif fault == "no_response":
            self.comms.no_response = active
        elif fault == "slow":
            self.comms.slow_s = float(options.get("delay_s", 2.0)) if active else 0.0
        elif fault == "exception":
            self.comms.exception_code = int(options.get("code", 4)) if active else 0
        elif fault == "garbage":
            self.comms.garbage = active
        elif fault == "drop_connection":
            self.comms.drop_connection = active
        elif fault in ("silent_disconnect", "vanish", "malformed_json", "duplicate_acks",
                       "never_ack", "lost_reply"):
            setattr(self.comms, fault, active)
        elif fault == "late_acks":
            self.comms.late_acks_s = float(options.get("delay_s", 10.0)) if active else 0.0
        else:
            raise ValueError(f"unknown fault {fault!r}")

    def set_battery(self, volts: float, now: float) -> None:
        self.advance(now)
        self.battery_v = min(max(volts, self.params.battery_empty_v), self.params.battery_full_v)

    # -- what the device reports -------------------------------------------------------------

    def status_values(self, now: float) -> dict[str, Value]:
        """The controller's status in the canonical point names that profiles map to registers."""
        self.advance(now)
        p, act = self.params, self._activity
        horn = self.horn_on(now)
        if act is None:
            state, signal = "idle", "none"
        elif act.kind == "silent_test":
            state, signal = "silent_test", "none"
        else:
            state = "sounding" if now >= act.start else "start_pending"
            signal = act.signal or "none"
        temperature = p.overheat_temperature_c if self.overheat else (
            p.base_temperature_c + 0.4 * math.sin(now / 900))
        values: dict[str, Value] = {
            "state": state,
            "current_signal": signal,
            "mains_present": self.mains_present,
            "dc_ok": self.battery_v >= p.dc_ok_min_v,
            "charger_fault": False,
            "cabinet_door_open": self.cabinet_door_open,
            "battery_box_open": self.battery_box_open,
            "sabotage": self.sabotage_latched,
            "local_activation": self.local_activation_latched,
            "driver_fault": self.driver_latched,
            "overheat": self.overheat,
            "battery_voltage": round(self.battery_v, 2),
            "charger_state": ("float" if self.battery_v >= p.battery_full_v - 0.05 else "charging")
            if self.mains_present else "off",
            "mains_voltage": 230.0 if self.mains_present else 0.0,
            "cabinet_temperature": round(temperature, 1),
            "link_quality": p.link_quality_dbm,
            "sounding_current": round(p.amplifier_current_a * self._working_amplifiers(), 2)
            if horn else 0.0,
            "last_activation_result": self.last_result,
            "activation_counter": self.activation_counter,
            "device_clock": int(self.device_time(now)),
            "last_command_sequence": self.last_command_sequence,
            "armed": self.armed,
            "clock_synced": abs(self.device_time(now) - now) < 1.0,
            "mains_frequency": 50.0 if self.mains_present else 0.0,
            "firmware": self.firmware,
        }
        for i, latched in enumerate(self.amplifier_latched):
            values[f"amplifier_{i + 1}_fault"] = latched
        return values

    def truth(self, now: float) -> dict[str, Any]:
        """What is physically true, for tests and benchmarks to judge the gateway by."""
        values = self.status_values(now)
        act = self._activity
        return {
            "siren_id": self.siren_id,
            "sounding": self.horn_on(now) and self._working_amplifiers() > 0,
            "horn_on": self.horn_on(now),
            "state": values["state"],
            "signal": None if act is None else act.signal,
            "battery_voltage": round(self.battery_v, 3),
            "mains_present": self.mains_present,
            "amplifiers_broken": list(self.amplifier_broken),
            "values": values,
            "device_time": datetime.fromtimestamp(self.device_time(now), UTC).isoformat(),
            "clock_offset_s": round(self.device_time(now) - now, 3),
            "commands_received": self.commands_received,
            "last_command_sequence": self.last_command_sequence,
            "comms": asdict(self.comms),
            "onsets": [asdict(o) for o in self.onsets],
        }

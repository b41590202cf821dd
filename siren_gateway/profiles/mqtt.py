"""MQTT device profiles: the topic and JSON payload scheme of one controller model.

The wire scheme (docs/mqtt-devices.md) is fixed in shape: topics `{prefix}/{device}/{suffix}`,
JSON telemetry with a device timestamp, a retained online/offline state, commands that carry an
id and acknowledgements that echo it. What a profile declares is the model's own part: the topic
suffixes, where each status point sits in the telemetry object, its type, scale and faults.

Every inbound payload is validated here, at the edge, into a typed Sample or a typed Ack; a
payload that is wrong in any way raises PayloadError with a short reason the link counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from siren_gateway.config.common import StrictModel
from siren_gateway.model import (
    SEQUENCE_POINT,
    Command,
    CommandKind,
    Value,
    check_sequence_readback,
    shared_faults,
)
from siren_gateway.profiles.codec import scale_decimals
from siren_gateway.profiles.mqtt_decode import MAX_STRING, TelemetryDecoder

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
TopicSuffix = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
FieldPath = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]
JsonType = Literal["float", "int", "bool", "string", "enum"]

ACK_STATUSES = frozenset({"accepted", "rejected", "sounding", "finished", "failed"})
DEVICE_STATES = frozenset({"online", "offline"})


class PayloadError(Exception):
    """An inbound payload that cannot be trusted; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class JsonPointSpec(StrictModel):
    name: Identifier
    field: FieldPath  # dotted path into the telemetry object: power.battery_v
    type: JsonType
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    description: str = ""
    values: list[str] | None = None  # the allowed labels of an enum point
    fault: Identifier | None = None
    fault_when: Value | None = None
    latched: bool = False
    required: bool = False  # a telemetry message without it is rejected

    @model_validator(mode="after")
    def _check(self) -> JsonPointSpec:
        if (self.type == "enum") != (self.values is not None):
            raise ValueError("'values' goes with type enum, and enum needs 'values'")
        if (self.fault is None) != (self.fault_when is None):
            raise ValueError("'fault' and 'fault_when' go together")
        if (self.scale != 1.0 or self.offset != 0.0) and self.type not in ("float", "int"):
            raise ValueError("'scale' and 'offset' are for numeric points")
        return self


class TopicSuffixes(StrictModel):
    telemetry: TopicSuffix = "telemetry"
    state: TopicSuffix = "state"
    command: TopicSuffix = "command"
    ack: TopicSuffix = "ack"

    @model_validator(mode="after")
    def _distinct(self) -> TopicSuffixes:
        names = [self.telemetry, self.state, self.command, self.ack]
        if len(set(names)) != len(names):
            raise ValueError("the four topic suffixes must differ")
        return self


class MqttProfileSpec(StrictModel):
    model: Identifier
    vendor: str = ""
    description: str = ""
    protocol: Literal["mqtt"]
    # The device reports at least this often, and on every change of state or faults.
    telemetry_interval_s: float = Field(default=30.0, gt=0, le=3600)
    max_payload_bytes: int = Field(default=8192, ge=64, le=1_048_576)
    # A message whose timestamp is further than this from the gateway's clock is refused as
    # stale (held by a broker, replayed) or impossible; wider than any clock skew we tolerate.
    max_message_age_s: float = Field(default=300.0, gt=0, le=86400)
    timestamp_field: FieldPath = "ts"
    topics: TopicSuffixes = TopicSuffixes()
    sounding_current_threshold: float | None = None
    # Rated level, dB(C) at 30 m, and the faults that stop it making sound (audible coverage).
    rated_db_c: float | None = Field(default=None, ge=60, le=150)
    silencing_faults: list[Identifier] = []
    # Signal ids as the device knows them; a signal not listed goes by its site id.
    signal_codes: dict[Identifier, str] = {}
    points: list[JsonPointSpec]
    commands: list[CommandKind] = Field(min_length=1)
    # As for Modbus profiles (profiles.check_sequence_readback): the telemetry reports the
    # sequence of the last command carried out, or the profile says it cannot.
    sequence_readback: bool | None = None

    @model_validator(mode="after")
    def _check_points(self) -> MqttProfileSpec:
        names = [p.name for p in self.points]
        if len(names) != len(set(names)):
            raise ValueError("point names must be unique")
        check_sequence_readback(self.sequence_readback, SEQUENCE_POINT in names)
        paths = [p.field for p in self.points] + [self.timestamp_field]
        if len(paths) != len(set(paths)):
            raise ValueError("two points (or a point and the timestamp) read the same field")
        return self


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    """The four topics of one device: `{prefix}/{device}/{suffix}` (docs/mqtt-devices.md)."""

    telemetry: str
    state: str
    command: str
    ack: str


@dataclass(frozen=True, slots=True)
class Ack:
    command_id: str
    status: str  # accepted, rejected, sounding, finished, failed
    reason: str
    device_time: datetime | None


def _finite(value: float) -> bool:
    return math.isfinite(value)


PointReader = Callable[[Any], Value]
_Entry = tuple[str, str, PointReader, bool, Value | None, str | None]


def _decode_entries(data: dict[str, Any], entries: list[_Entry], values: dict[str, Value],
                    faults: set[str]) -> None:
    get = data.get
    for key, name, read, required, fault_when, fault in entries:
        raw = get(key)
        if raw is None:
            if required:
                raise PayloadError("missing_field", name)
            continue
        value = values[name] = read(raw)
        if fault is not None and value == fault_when:
            faults.add(fault)


def _reader(spec: JsonPointSpec) -> PointReader:
    """One converter per point: raw JSON value -> typed value, PayloadError when it is wrong."""
    name, scale, offset = spec.name, spec.scale, spec.offset
    scaled = scale != 1.0 or offset != 0.0
    decimals = scale_decimals(scale) if scaled else 0

    if spec.type == "float":
        def read_float(raw: Any) -> Value:
            if raw.__class__ not in (float, int) or not _finite(raw):
                raise PayloadError("wrong_type", f"{name} must be a number, got {raw!r:.40}")
            return round(raw * scale + offset, decimals) if scaled else float(raw)
        return read_float
    if spec.type == "int":
        def read_int(raw: Any) -> Value:
            if raw.__class__ is not int:
                raise PayloadError("wrong_type", f"{name} must be an integer, got {raw!r:.40}")
            return round(raw * scale + offset, decimals) if scaled else raw
        return read_int
    if spec.type == "bool":
        def read_bool(raw: Any) -> Value:
            if raw.__class__ is not bool:
                raise PayloadError("wrong_type", f"{name} must be true or false, got {raw!r:.40}")
            return bool(raw)
        return read_bool
    if spec.type == "enum":
        allowed = frozenset(spec.values or ())

        def read_enum(raw: Any) -> Value:
            if raw.__class__ is not str or raw not in allowed:
                raise PayloadError("wrong_type", f"{name} must be one of {sorted(allowed)}, "
                                   f"got {raw!r:.40}")
            return str(raw)
        return read_enum

    def read_string(raw: Any) -> Value:
        if raw.__class__ is not str or len(raw) > MAX_STRING:
            raise PayloadError("wrong_type", f"{name} must be a string, got {raw!r:.40}")
        return str(raw)
    return read_string


class MqttProfile:
    """A compiled MQTT profile: payload validation and encoding in both directions."""

    protocol = "mqtt"

    def __init__(self, spec: MqttProfileSpec, source: Path | None = None) -> None:
        self.spec = spec
        self.source = source
        self.name = spec.model
        # The decode plan: points grouped by the object they sit in, so a report with nested
        # sections costs one lookup per section and one per field (this runs per message).
        # Each entry: (key, point name, reader, required, fault when, fault name).
        self._top: list[_Entry] = []
        self._groups: list[tuple[str, list[_Entry]]] = []
        self._deep: list[tuple[tuple[str, ...], _Entry]] = []
        groups: dict[str, list[_Entry]] = {}
        for p in spec.points:
            path = tuple(p.field.split("."))
            entry = (path[-1], p.name, _reader(p), p.required, p.fault_when, p.fault)
            if len(path) == 1:
                self._top.append(entry)
            elif len(path) == 2:
                groups.setdefault(path[0], []).append(entry)
            else:
                self._deep.append((path, entry))
        self._groups = list(groups.items())
        self._ts_path = tuple(spec.timestamp_field.split("."))
        self._fault_rules = [(p.name, p.fault_when, p.fault) for p in spec.points
                             if p.fault is not None]
        self.latched_faults = frozenset(p.fault for p in spec.points if p.fault and p.latched)
        self.signal_by_code = {code: name for name, code in spec.signal_codes.items()}
        self.commands = frozenset(spec.commands)
        self._fast = TelemetryDecoder(spec.points, spec.timestamp_field)

    def topics(self, prefix: str, device_id: str) -> DeviceTopics:
        base, suffixes = f"{prefix}/{device_id}/", self.spec.topics
        return DeviceTopics(base + suffixes.telemetry, base + suffixes.state,
                            base + suffixes.command, base + suffixes.ack)

    # -- inbound -----------------------------------------------------------------------------

    def parse_object(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.spec.max_payload_bytes:
            raise PayloadError("oversized", f"{len(payload)} bytes")
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError("malformed_json", str(exc)[:80]) from None
        if not isinstance(data, dict):
            raise PayloadError("not_an_object", type(data).__name__)
        return data

    def decode_telemetry_bytes(self, payload: bytes
                               ) -> tuple[dict[str, Value], frozenset[str], datetime]:
        """As `decode_telemetry(parse_object(payload))`; a valid report takes msgspec's typed
        path (mqtt_decode.py), anything else the validator below, which names the reason."""
        if len(payload) <= self.spec.max_payload_bytes:
            fast = self._fast.decode(payload)
            if fast is not None:
                return fast
        return self.decode_telemetry(self.parse_object(payload))

    def decode_telemetry(self, data: dict[str, Any]
                         ) -> tuple[dict[str, Value], frozenset[str], datetime]:
        """Typed values, the faults they mean, and the device's timestamp, from one report."""
        ts = _walk(data, self._ts_path)
        if ts is None:
            raise PayloadError("missing_field", self.spec.timestamp_field)
        if ts.__class__ not in (int, float) or not _finite(ts) or ts <= 0:
            raise PayloadError("wrong_type", f"{self.spec.timestamp_field} must be epoch "
                               f"seconds, got {ts!r:.40}")
        values: dict[str, Value] = {}
        faults: set[str] = set()
        _decode_entries(data, self._top, values, faults)
        for key, entries in self._groups:
            section = data.get(key)
            if section.__class__ is dict:
                _decode_entries(section, entries, values, faults)
            elif section is None:
                _decode_entries({}, entries, values, faults)  # only to insist on required ones
            else:
                raise PayloadError("wrong_type", f"{key} must be an object")
        for path, entry in self._deep:
            parent = _walk(data, path[:-1])
            _decode_entries(parent if isinstance(parent, dict) else {}, [entry], values, faults)
        try:
            device_time = datetime.fromtimestamp(ts, UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError("wrong_type", f"timestamp {ts!r} out of range") from None
        return values, shared_faults(frozenset(faults)), device_time

    def faults(self, values: dict[str, Value]) -> frozenset[str]:
        return shared_faults(frozenset(fault for point, when, fault in self._fault_rules
                                       if values.get(point) == when))

    @staticmethod
    def decode_state(payload: bytes) -> str:
        text = payload.decode("utf-8", "replace").strip()
        if text not in DEVICE_STATES:
            raise PayloadError("bad_state", repr(text[:40]))
        return text

    def decode_ack(self, payload: bytes) -> Ack:
        data = self.parse_object(payload)
        command_id, status = data.get("id"), data.get("status")
        if not isinstance(command_id, str) or not 0 < len(command_id) <= 64:
            raise PayloadError("bad_ack", "id must be a short string")
        if status not in ACK_STATUSES:
            raise PayloadError("bad_ack", f"status {status!r:.40}")
        reason = data.get("reason", "")
        ts = data.get("ts")
        device_time = None
        if isinstance(ts, int | float) and not isinstance(ts, bool) and _finite(ts) and ts > 0:
            device_time = datetime.fromtimestamp(ts, UTC)
        return Ack(command_id, str(status), str(reason)[:MAX_STRING], device_time)

    # -- outbound (the gateway's commands) ---------------------------------------------------

    def supports(self, kind: CommandKind) -> bool:
        return kind in self.commands

    def encode_command(self, command: Command, issued_at: float, expires_at: float) -> bytes:
        if command.kind not in self.commands:
            raise ValueError(f"profile {self.name!r} has no command {command.kind.value!r}")
        body: dict[str, Any] = {"id": command.command_id, "command": command.kind.value,
                                "sequence": command.sequence & 0xFFFF,
                                "issued_at": round(issued_at, 3),
                                "expires_at": round(expires_at, 3)}
        if command.signal is not None:
            body["signal"] = self.spec.signal_codes.get(command.signal, command.signal)
        if command.start_at is not None:
            body["start_time"] = int(command.start_at.timestamp())
        if command.clock is not None:
            body["clock"] = int(command.clock.timestamp())
        return json.dumps(body, separators=(",", ":")).encode()

    # -- the simulator's side ----------------------------------------------------------------

    def encode_telemetry(self, values: dict[str, Value], device_time: float) -> bytes:
        out: dict[str, Any] = {}
        _place(out, self._ts_path, round(device_time, 3))
        for point in self.spec.points:
            if point.name not in values:
                continue
            value = values[point.name]
            if point.type in ("float", "int") and not isinstance(value, bool):
                raw = (float(value) - point.offset) / point.scale
                value = round(raw) if point.type == "int" else round(raw, 6)
            _place(out, tuple(point.field.split(".")), value)
        return json.dumps(out, separators=(",", ":")).encode()

    def decode_command(self, payload: bytes) -> tuple[Command, float | None]:
        """A command as a device reads it, with its expiry (gateway epoch seconds)."""
        data = self.parse_object(payload)
        try:
            kind = CommandKind(data["command"])
            signal = data.get("signal")
            if signal is not None:
                signal = self.signal_by_code.get(signal, signal)
            start = data.get("start_time")
            clock = data.get("clock")
            command = Command(
                kind=kind, signal=signal,
                start_at=datetime.fromtimestamp(start, UTC) if start else None,
                clock=datetime.fromtimestamp(clock, UTC) if clock else None,
                sequence=int(data.get("sequence", 0)), command_id=str(data["id"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError("bad_command", str(exc)[:80]) from None
        expires = data.get("expires_at")
        return command, float(expires) if isinstance(expires, int | float) else None


def _walk(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _place(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def parse_mqtt_profile(data: Any, source: Path | None = None) -> MqttProfile:
    return MqttProfile(MqttProfileSpec.model_validate(data), source)

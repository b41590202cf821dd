"""Device profiles: the declarative description of one controller model.

A profile is YAML (siren_gateway/data/devices/*.yaml), validated here into typed objects and
compiled once into what the hot path needs: a read plan (few, large requests) and one decoder
per point. The same compiled profile drives the simulator, so a register's address, type and
scale have one home.

One module, past 400 lines: the profile's format and its compiled form (read plan, decoders,
command codec) change together; the generated decoder and the register codec are apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from siren_gateway.profiles.codec import (
    REGISTER_COUNT,
    DataType,
    Order,
    RawValue,
    encode_value,
    make_decoder,
    scale_decimals,
)
from siren_gateway.profiles.modbus_decode import StatusDecoder, compile_status_decoder
from siren_gateway.profiles.mqtt import MqttProfile, parse_mqtt_profile

Table = Literal["input", "holding"]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]

# Modbus caps a read at 125 registers (FC3/FC4); many controllers accept far fewer.
MODBUS_MAX_READ = 125


class BitSpec(StrictModel):
    name: Identifier
    fault: Identifier | None = None  # fault raised while the bit equals fault_when
    fault_when: bool = True
    latched: bool = False  # the device holds the fault until a reset command


class PointSpec(StrictModel):
    name: Identifier
    table: Table = "input"
    address: int = Field(ge=0, le=65535)
    type: DataType
    length: int | None = Field(default=None, ge=1, le=64)  # registers, for strings only
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    description: str = ""
    # Label values (state machine, charger mode); "signal_codes" reuses the profile's signal table.
    enum: dict[int, str] | Literal["signal_codes"] | None = None
    bits: dict[int, BitSpec] | None = None  # for bitfield points
    fault: Identifier | None = None  # fault raised while the decoded value equals fault_when
    fault_when: Value | None = None
    latched: bool = False

    @model_validator(mode="after")
    def _check_shape(self) -> PointSpec:
        if self.type == "string" and self.length is None:
            raise ValueError("a string point needs 'length' (registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError("'length' is only for string points")
        if (self.type == "bitfield") != (self.bits is not None):
            raise ValueError("'bits' goes with type bitfield, and bitfield needs 'bits'")
        if self.bits and any(not 0 <= bit <= 15 for bit in self.bits):
            raise ValueError("bit numbers run from 0 to 15")
        if (self.fault is None) != (self.fault_when is None):
            raise ValueError("'fault' and 'fault_when' go together")
        if self.enum is not None and self.type not in ("u16", "i16"):
            raise ValueError("'enum' is for u16/i16 points")
        return self

    @property
    def register_count(self) -> int:
        return self.length if self.type == "string" and self.length else REGISTER_COUNT[self.type]


class CommandField(StrictModel):
    offset: int = Field(ge=0)  # registers from the start of the command block
    type: Literal["u16", "u32"]


class CommandEncoding(StrictModel):
    code: int = Field(ge=1, le=0xFFFF)
    params: list[Literal["signal", "start_time", "clock"]] = []


COMMAND_FIELDS = frozenset({"code", "signal", "start_time", "clock", "sequence"})


class CommandBlock(StrictModel):
    """Commands are written as one block (FC16) so a device never sees half a command."""

    table: Literal["holding"] = "holding"
    address: int = Field(ge=0, le=65535)
    length: int = Field(ge=1, le=123)
    fields: dict[str, CommandField]
    encodings: dict[CommandKind, CommandEncoding]

    @model_validator(mode="after")
    def _check_fields(self) -> CommandBlock:
        unknown = set(self.fields) - COMMAND_FIELDS
        if unknown:
            raise ValueError(f"unknown command fields {sorted(unknown)}; known: {sorted(COMMAND_FIELDS)}")
        if "code" not in self.fields:
            raise ValueError("the command block needs a 'code' field")
        for name, spec in self.fields.items():
            end = spec.offset + REGISTER_COUNT[spec.type]
            if end > self.length:
                raise ValueError(f"field {name!r} ends past the block ({end} > {self.length})")
        for kind, enc in self.encodings.items():
            for param in enc.params:
                if param not in self.fields:
                    raise ValueError(f"command {kind.value!r} uses {param!r}, not a field")
        codes = [enc.code for enc in self.encodings.values()]
        if len(codes) != len(set(codes)):
            raise ValueError("two commands share a code")
        return self


class ProfileSpec(StrictModel):
    model: Identifier
    vendor: str = ""
    description: str = ""
    protocol: Literal["modbus"]
    byte_order: Order = "big"
    word_order: Order = "big"
    max_registers_per_read: int = Field(default=MODBUS_MAX_READ, ge=1, le=MODBUS_MAX_READ)
    # Read across a gap of up to this many unused registers rather than issue another request.
    max_read_gap: int = Field(default=4, ge=0, le=64)
    # Amperes of sounding current above which the horn is taken to be really sounding.
    sounding_current_threshold: float | None = None
    # Rated level, dB(C) at 30 m, and the faults that stop it making sound (audible coverage).
    rated_db_c: float | None = Field(default=None, ge=60, le=150)
    silencing_faults: list[Identifier] = []
    signal_codes: dict[Identifier, int] = {}
    points: list[PointSpec]
    commands: CommandBlock
    # Whether the controller reports the sequence of the last command it carried out (the
    # `last_command_sequence` point). Without it a command whose reply was lost can never be
    # told apart from one that was not delivered, so a sound command is then never repeated:
    # a profile without the point must say `sequence_readback: false` to accept that.
    sequence_readback: bool | None = None

    @model_validator(mode="after")
    def _check_points(self) -> ProfileSpec:
        names: set[str] = set()
        for point in self.points:
            for name in [point.name, *(b.name for b in (point.bits or {}).values())]:
                if name in names:
                    raise ValueError(f"point name {name!r} is used twice")
                names.add(name)
            if point.enum == "signal_codes" and not self.signal_codes:
                raise ValueError(f"point {point.name!r} uses signal_codes, but there are none")
            if point.register_count > self.max_registers_per_read:
                raise ValueError(f"point {point.name!r} is longer than max_registers_per_read")
        check_sequence_readback(self.sequence_readback, SEQUENCE_POINT in names)
        used: dict[tuple[str, int], str] = {}
        for point in self.points:
            for addr in range(point.address, point.address + point.register_count):
                key = (point.table, addr)
                if key in used:
                    raise ValueError(
                        f"points {used[key]!r} and {point.name!r} overlap at {point.table} {addr}"
                    )
                used[key] = point.name
        return self


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request in the poll plan."""

    table: Table
    address: int
    count: int


PointDecoder = Callable[[Sequence[int], dict[str, Value]], None]


class CompiledPoint:
    """A point with its place in the read plan and its layout resolved.

    `decode_into` is the point's reference decoder: the generated status decoder
    (modbus_decode) calls it for the shapes it does not write out, and the tests hold the
    generated code to it."""

    __slots__ = ("block_index", "byte_order", "decimals", "decode_into", "labels", "offset",
                 "spec", "word_order")

    def __init__(self, spec: PointSpec, profile: ProfileSpec, block_index: int, offset: int):
        self.spec = spec
        self.block_index = block_index
        self.offset = offset  # registers from the start of its read block
        self.byte_order: Order = spec.byte_order or profile.byte_order
        self.word_order: Order = spec.word_order or profile.word_order
        self.decimals = scale_decimals(spec.scale)
        if spec.enum == "signal_codes":
            self.labels: dict[int, str] | None = {0: "none"} | {
                code: name for name, code in profile.signal_codes.items()
            }
        else:
            self.labels = spec.enum
        self.decode_into: PointDecoder = _point_decoder(self)


def _point_decoder(point: CompiledPoint) -> PointDecoder:
    """A closure that writes the point's decoded value(s) into `out`: every type and layout."""
    spec, at, labels = point.spec, point.offset, point.labels
    name, scale, offset, decimals = spec.name, spec.scale, spec.offset, point.decimals
    scaled = scale != 1.0 or offset != 0.0
    decode = make_decoder(spec.type, spec.register_count, point.byte_order, point.word_order)
    bit_names = [(bit, b.name) for bit, b in spec.bits.items()] if spec.bits else None
    is_f32 = spec.type == "f32"

    def general(regs: Sequence[int], out: dict[str, Value]) -> None:
        raw = decode(regs, at)
        if bit_names is not None:
            word = int(raw)
            for bit, bit_name in bit_names:
                out[bit_name] = bool(word >> bit & 1)
        elif labels is not None:
            out[name] = labels.get(int(raw), f"unknown_{raw}")
        elif isinstance(raw, str):
            out[name] = raw
        else:
            if is_f32:
                raw = float(f"{raw:.7g}")  # float32 carries ~7 significant digits; the rest is noise
            out[name] = round(raw * scale + offset, decimals) if scaled else raw

    return general


class FaultRule:
    __slots__ = ("fault", "latched", "point", "when")

    def __init__(self, point: str, when: Value, fault: str, latched: bool):
        self.point, self.when, self.fault, self.latched = point, when, fault, latched


class ModbusProfile:
    """A compiled profile: read plan, decoders, fault rules and command codec."""

    protocol = "modbus"

    def __init__(self, spec: ProfileSpec, source: Path | None = None):
        self.spec = spec
        self.source = source
        self.name = spec.model
        self.blocks, self.points = self._plan_reads(spec)
        self.fault_rules = self._fault_rules(spec)
        self.decode_status: StatusDecoder = compile_status_decoder(self.points, self.fault_rules)
        self.latched_faults = frozenset(r.fault for r in self.fault_rules if r.latched)
        self.signal_by_code = {code: name for name, code in spec.signal_codes.items()}
        self.kind_by_code = {enc.code: kind for kind, enc in spec.commands.encodings.items()}

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _plan_reads(spec: ProfileSpec) -> tuple[list[ReadBlock], list[CompiledPoint]]:
        """Group points into as few reads as the device's request size allows."""
        blocks: list[ReadBlock] = []
        placed: list[tuple[PointSpec, int, int]] = []
        for table in ("input", "holding"):
            points = sorted((p for p in spec.points if p.table == table), key=lambda p: p.address)
            start = end = -1
            members: list[PointSpec] = []
            for point in points:
                p_end = point.address + point.register_count
                fits = (
                    members
                    and point.address - end <= spec.max_read_gap
                    and p_end - start <= spec.max_registers_per_read
                )
                if fits:
                    end = max(end, p_end)
                    members.append(point)
                    continue
                if members:
                    blocks.append(ReadBlock(table, start, end - start))
                    placed += [(m, len(blocks) - 1, m.address - start) for m in members]
                start, end, members = point.address, p_end, [point]
            if members:
                blocks.append(ReadBlock(table, start, end - start))
                placed += [(m, len(blocks) - 1, m.address - start) for m in members]
        compiled = [CompiledPoint(p, spec, index, offset) for p, index, offset in placed]
        return blocks, compiled

    @staticmethod
    def _fault_rules(spec: ProfileSpec) -> list[FaultRule]:
        rules: list[FaultRule] = []
        for point in spec.points:
            if point.fault is not None and point.fault_when is not None:
                rules.append(FaultRule(point.name, point.fault_when, point.fault, point.latched))
            for bit in (point.bits or {}).values():
                if bit.fault is not None:
                    rules.append(FaultRule(bit.name, bit.fault_when, bit.fault, bit.latched))
        return rules

    def decode(self, block_registers: Sequence[Sequence[int]]) -> dict[str, Value]:
        """Decode the registers of every read block (in plan order) into named values.
        (The poll path uses `decode_status`, which returns the faults with them.)"""
        return self.decode_status(block_registers)[0]

    def faults(self, values: dict[str, Value]) -> frozenset[str]:
        """The faults that decoded values show (for values that did not come from registers)."""
        return shared_faults(frozenset(
            rule.fault for rule in self.fault_rules if values.get(rule.point) == rule.when
        ))

    # -- writing status (the simulator's side) ----------------------------------------------

    def encode_status(self, values: dict[str, Value]) -> dict[Table, dict[int, int]]:
        """Registers (by table and address) that present `values` the way a device would."""
        out: dict[Table, dict[int, int]] = {"input": {}, "holding": {}}
        for point in self.points:
            spec = point.spec
            raw: RawValue
            if spec.bits is not None:
                word = 0
                for bit, bit_spec in spec.bits.items():
                    if values.get(bit_spec.name):
                        word |= 1 << bit
                raw = word
            elif spec.name not in values:
                continue
            else:
                value = values[spec.name]
                if point.labels is not None:
                    raw = next((c for c, label in point.labels.items() if label == value), 0)
                elif spec.type == "string":
                    raw = str(value)
                else:
                    scaled = (float(value) - spec.offset) / spec.scale
                    raw = scaled if spec.type == "f32" else _clamp(spec.type, round(scaled))
            words = encode_value(
                spec.type,
                raw,
                spec.register_count,
                spec.byte_order or self.spec.byte_order,
                spec.word_order or self.spec.word_order,
            )
            for i, word in enumerate(words):
                out[spec.table][spec.address + i] = word
        return out

    # -- commands --------------------------------------------------------------------------

    def supports(self, kind: CommandKind) -> bool:
        return kind in self.spec.commands.encodings

    def encode_command(self, command: Command) -> tuple[int, list[int]]:
        """The start address and register values that carry `command` to the device."""
        block = self.spec.commands
        encoding = block.encodings.get(command.kind)
        if encoding is None:
            raise ValueError(f"profile {self.name!r} has no encoding for {command.kind.value!r}")
        words = [0] * block.length
        params: dict[str, int] = {"code": encoding.code, "sequence": command.sequence & 0xFFFF}
        if "signal" in encoding.params:
            if command.signal not in self.spec.signal_codes:
                raise ValueError(f"profile {self.name!r} has no code for signal {command.signal!r}")
            params["signal"] = self.spec.signal_codes[command.signal]
        if "start_time" in encoding.params:
            params["start_time"] = _epoch(command.start_at) if command.start_at else 0
        if "clock" in encoding.params and command.clock is not None:
            params["clock"] = _epoch(command.clock)
        for name, value in params.items():
            field_spec = block.fields.get(name)
            if field_spec is None:
                continue
            encoded = encode_value(field_spec.type, value, REGISTER_COUNT[field_spec.type],
                                   self.spec.byte_order, self.spec.word_order)
            words[field_spec.offset : field_spec.offset + len(encoded)] = encoded
        return block.address, words

    def decode_command(self, words: Sequence[int]) -> Command | None:
        """Inverse of encode_command, for the simulator. None for an unknown code."""
        block = self.spec.commands

        def field_value(name: str) -> int:
            spec = block.fields.get(name)
            if spec is None:
                return 0
            decoder = make_decoder(spec.type, REGISTER_COUNT[spec.type],
                                   self.spec.byte_order, self.spec.word_order)
            return int(decoder(words, spec.offset))

        kind = self.kind_by_code.get(field_value("code"))
        if kind is None:
            return None
        signal = self.signal_by_code.get(field_value("signal")) if kind is CommandKind.SOUND else None
        if kind is CommandKind.SOUND and signal is None:
            return None
        start = field_value("start_time")
        clock = field_value("clock")
        return Command(
            kind=kind,
            signal=signal,
            start_at=datetime.fromtimestamp(start, UTC) if start else None,
            clock=datetime.fromtimestamp(clock, UTC) if kind is CommandKind.SET_CLOCK else None,
            sequence=field_value("sequence"),
        )


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


_LIMITS = {"u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF), "u32": (0, 0xFFFFFFFF),
           "i32": (-0x80000000, 0x7FFFFFFF), "bitfield": (0, 0xFFFF)}


def _clamp(data_type: str, value: int) -> int:
    low, high = _LIMITS[data_type]
    return min(max(value, low), high)


def parse_profile(data: Any, source: Path | None = None) -> DeviceProfile:
    """A compiled profile of the protocol the file names (modbus unless it says mqtt)."""
    if isinstance(data, dict) and data.get("protocol") == "mqtt":
        return parse_mqtt_profile(data, source)
    return ModbusProfile(ProfileSpec.model_validate(data), source)


DeviceProfile = ModbusProfile | MqttProfile

"""Register codec and device profiles: layouts, read planning, commands, validation."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from siren_gateway.config.loading import load_profiles
from siren_gateway.data import DEFAULT_PROFILES_DIR
from siren_gateway.model import Command, CommandKind, Value
from siren_gateway.profiles.codec import encode_value, make_decoder
from siren_gateway.profiles.modbus import ModbusProfile, parse_profile

GENERIC_FILE = DEFAULT_PROFILES_DIR / "generic-siren-controller.yaml"


def generic_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(GENERIC_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def generic() -> ModbusProfile:
    profile = load_profiles(DEFAULT_PROFILES_DIR)["generic_siren_controller"]
    assert isinstance(profile, ModbusProfile)
    return profile


@pytest.mark.parametrize(
    ("data_type", "value", "byte_order", "word_order", "registers"),
    [
        ("u16", 0xBEEF, "big", "big", [0xBEEF]),
        ("u16", 0xBEEF, "little", "big", [0xEFBE]),
        ("i16", -2, "big", "big", [0xFFFE]),
        ("u32", 0x12345678, "big", "big", [0x1234, 0x5678]),
        ("u32", 0x12345678, "big", "little", [0x5678, 0x1234]),
        ("u32", 0x12345678, "little", "little", [0x7856, 0x3412]),
        ("i32", -100000, "big", "big", [0xFFFE, 0x7960]),
        ("f32", 1.5, "big", "big", [0x3FC0, 0x0000]),
        ("f32", 1.5, "big", "little", [0x0000, 0x3FC0]),
        ("string", "SG-1", "big", "big", [0x5347, 0x2D31, 0x0000]),
        ("string", "SG-1", "little", "big", [0x4753, 0x312D, 0x0000]),
    ],
)
def test_codec_known_layouts(data_type: Any, value: Any, byte_order: Any, word_order: Any,
                             registers: list[int]) -> None:
    count = len(registers)
    assert encode_value(data_type, value, count, byte_order, word_order) == registers
    decoder = make_decoder(data_type, count, byte_order, word_order)
    assert decoder([0xAAAA, *registers], 1) == value  # decodes at an offset inside a block


def test_generic_profile_has_the_domain_status_points(generic: ModbusProfile) -> None:
    names = {p.spec.name for p in generic.points}
    names |= {b.name for p in generic.points for b in (p.spec.bits or {}).values()}
    required = {"mains_present", "battery_voltage", "charger_state", "amplifier_1_fault",
                "cabinet_door_open", "cabinet_temperature", "link_quality", "state",
                "current_signal", "sounding_current", "local_activation",
                "last_activation_result", "activation_counter", "device_clock", "firmware"}
    assert required <= names
    assert set(generic.spec.commands.encodings) == set(CommandKind)
    # Every status point of the generic controller comes back in a single request.
    assert len(generic.blocks) == 1


def test_read_plan_respects_request_size_and_gaps() -> None:
    data = generic_data()
    data["max_registers_per_read"] = 10
    profile = parse_profile(data)
    assert isinstance(profile, ModbusProfile)
    assert [b.count for b in profile.blocks] == [10, 10, 8]
    assert all(b.count <= 10 for b in profile.blocks)
    data = generic_data()
    data["points"].append({"name": "far_away", "address": 200, "type": "u16"})
    profile = parse_profile(data)
    assert isinstance(profile, ModbusProfile)
    assert [(b.address, b.count) for b in profile.blocks] == [(0, 28), (200, 1)]


def test_status_round_trip_through_registers(generic: ModbusProfile) -> None:
    values: dict[str, Value] = {"state": "sounding", "current_signal": "air_raid", "mains_present": False,
              "battery_voltage": 24.37, "cabinet_temperature": -12.5, "sounding_current": 13.99,
              "activation_counter": 123456, "device_clock": 1_789_000_000, "firmware": "SG-9.8.7",
              "mains_frequency": 49.97, "amplifier_3_fault": True, "charger_state": "off"}
    registers = generic.encode_status(values)["input"]
    block = [registers.get(i, 0) for i in range(generic.blocks[0].count)]
    decoded = generic.decode([block])
    for name, value in values.items():
        assert decoded[name] == value, name
    assert generic.faults(decoded) == {"mains_lost", "amplifier_fault", "dc_fault"}


@pytest.mark.parametrize("kind", list(CommandKind))
def test_every_command_round_trips(generic: ModbusProfile, kind: CommandKind) -> None:
    start = datetime(2026, 9, 18, 2, 0, tzinfo=UTC)
    command = Command(kind, signal="air_raid" if kind is CommandKind.SOUND else None,
                      start_at=start if kind is CommandKind.SOUND else None,
                      clock=start if kind is CommandKind.SET_CLOCK else None, sequence=4242)
    address, words = generic.encode_command(command)
    assert address == 100 and len(words) == 8
    assert generic.decode_command(words) == command


def test_unknown_signal_cannot_be_encoded(generic: ModbusProfile) -> None:
    with pytest.raises(ValueError, match="no code for signal"):
        generic.encode_command(Command(CommandKind.SOUND, signal="tsunami"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["points"].append({"name": "clash", "address": 5, "type": "u16"}), "overlap"),
        (lambda d: d["points"].append({"name": "state", "address": 90, "type": "u16"}),
         "used twice"),
        (lambda d: d["points"].append({"name": "s", "address": 90, "type": "string"}), "length"),
        (lambda d: d["points"].append({"name": "b", "address": 90, "type": "u16",
                                       "bits": {0: {"name": "x"}}}), "bitfield"),
        (lambda d: d["commands"]["fields"].update({"code": {"offset": 9, "type": "u16"}}),
         "ends past the block"),
        (lambda d: d["points"][0].update({"colour": "red"}), "Extra inputs"),
        (lambda d: d.update({"max_registers_per_read": 126}), "less than or equal to 125"),
    ],
)
def test_profile_validation_rejects_mistakes(change: Any, message: str) -> None:
    data = copy.deepcopy(generic_data())
    change(data)
    with pytest.raises(ValidationError, match=message):
        parse_profile(data)

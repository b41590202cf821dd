"""The generated status decoder says exactly what the per-point reference decoders say."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from siren_gateway.data import DEFAULT_PROFILES_DIR
from siren_gateway.model import Value
from siren_gateway.profiles.codec import scale_decimals
from siren_gateway.profiles.modbus import ModbusProfile, parse_profile

GENERIC = yaml.safe_load((DEFAULT_PROFILES_DIR / "generic-siren-controller.yaml")
                         .read_text(encoding="utf-8"))


def variant(**changes: Any) -> ModbusProfile:
    data = copy.deepcopy(GENERIC)
    extra = changes.pop("extra_points", [])
    data.update(changes)
    data["points"] += extra
    profile = parse_profile(data)
    assert isinstance(profile, ModbusProfile)
    return profile


# Every shape the generator writes out, and every one it hands to the reference decoder.
EXTRA_POINTS = [
    {"name": "scaled_i32", "address": 40, "type": "i32", "scale": 0.001, "offset": -5},
    {"name": "plain_i32", "address": 42, "type": "i32"},
    {"name": "scaled_f32", "address": 44, "type": "f32", "scale": 10.0},
    {"name": "little_u16", "address": 46, "type": "u16", "byte_order": "little", "scale": 0.5},
    {"name": "little_bits", "address": 47, "type": "bitfield", "byte_order": "little",
     "bits": {0: {"name": "lb0", "fault": "lb_fault"}, 9: {"name": "lb9"}}},
    {"name": "labelled_i16", "address": 48, "type": "i16", "enum": {-1: "minus", 1: "plus"}},
    {"name": "low_voltage", "address": 49, "type": "u16", "fault": "low_voltage",
     "fault_when": 7},
    {"name": "serial", "address": 50, "type": "string", "length": 4, "byte_order": "little"},
    {"name": "far_word", "address": 90, "type": "u16", "scale": 0.1, "offset": 3},
]
PROFILES = {
    "generic": variant(),
    "words little": variant(word_order="little", extra_points=EXTRA_POINTS),
    "bytes little": variant(byte_order="little", extra_points=EXTRA_POINTS),
    "split reads": variant(max_registers_per_read=16, extra_points=EXTRA_POINTS),
}


def reference(profile: ModbusProfile, blocks: list[list[int]]
              ) -> tuple[dict[str, Value], frozenset[str]]:
    values: dict[str, Value] = {}
    for point in profile.points:
        point.decode_into(blocks[point.block_index], values)
    return values, profile.faults(values)


def same(a: Value, b: Value) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", list(PROFILES))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_generated_decoder_matches_the_reference(name: str, data: st.DataObject) -> None:
    profile = PROFILES[name]
    # Registers drawn whole, and often near the edges where signs and masks bite.
    word = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 2, 7, 0x7FFF, 0x8000,
                                                               0xFFFE, 0xFFFF]))
    blocks = [data.draw(st.lists(word, min_size=b.count, max_size=b.count))
              for b in profile.blocks]
    values, faults = profile.decode_status(blocks)
    expected_values, expected_faults = reference(profile, blocks)
    assert values.keys() == expected_values.keys()
    for key, value in expected_values.items():
        assert same(values[key], value), (key, values[key], value)
    assert faults == expected_faults
    # A second pass with the same registers (strings now come from the cache) agrees too.
    again = profile.decode_status(blocks)[0]
    assert all(same(again[key], value) for key, value in values.items())


def test_a_healthy_report_shares_one_empty_fault_set() -> None:
    profile = PROFILES["generic"]
    healthy = profile.encode_status({"mains_present": True, "dc_ok": True, "state": "idle"})
    block = [healthy["input"].get(i, 0) for i in range(profile.blocks[0].count)]
    first = profile.decode_status([block])[1]
    assert first == frozenset() and first is profile.decode_status([block])[1]


@pytest.mark.parametrize("scale", [0.1, 0.01, 0.001, 0.0001])
def test_a_decimal_scale_divides_exactly_as_the_reference_rounds(scale: float) -> None:
    """The generated code divides by 10**k where the reference rounds the product: the same
    float for every 16-bit register value, signed or not, and 32-bit values at the edges."""
    decimals = scale_decimals(scale)
    divisor = round(1 / scale)
    raws = [*range(-0x8000, 0x10000), 0x7FFFFFFF, 0xFFFFFFFF, -0x80000000, 123456789]
    assert all(raw / divisor == round(raw * scale, decimals) for raw in raws)


def test_a_response_that_is_an_exception_or_short_is_a_named_link_error() -> None:
    """The per-poll register check: a Modbus exception, too few registers, or none at all is
    a LinkError that names the block, never a decode of garbage."""
    from types import SimpleNamespace

    from siren_gateway.links.modbus import _registers
    from siren_gateway.model import LinkError
    from siren_gateway.profiles.modbus import ReadBlock

    block = ReadBlock("input", 100, 4)
    ok = SimpleNamespace(isError=lambda: False, registers=[1, 2, 3, 4])
    assert _registers(ok, block) == [1, 2, 3, 4]
    cases = [(SimpleNamespace(isError=lambda: True, exception_code=2), "exception"),
             (SimpleNamespace(isError=lambda: False, registers=[1, 2]), "malformed"),
             (SimpleNamespace(isError=lambda: False), "malformed")]
    for response, reason in cases:
        with pytest.raises(LinkError) as caught:
            _registers(response, block)
        assert caught.value.reason == reason and "input 100" in str(caught.value)

"""Register-level encoding of typed values, shared by the gateway and the simulators.

Modbus moves 16-bit registers. A device profile says how a value spans them: its data type, the
order of bytes inside each register and the order of registers inside a multi-register value.
Both directions live here so the simulator and the gateway can never disagree about a layout.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Literal

DataType = Literal["u16", "i16", "u32", "i32", "f32", "bitfield", "string"]
Order = Literal["big", "little"]

# Registers a value of each type occupies; strings take their length from the profile.
REGISTER_COUNT: dict[str, int] = {
    "u16": 1,
    "i16": 1,
    "bitfield": 1,
    "u32": 2,
    "i32": 2,
    "f32": 2,
}

_STRUCT_FORMAT: dict[str, str] = {
    "u16": ">H",
    "i16": ">h",
    "bitfield": ">H",
    "u32": ">I",
    "i32": ">i",
    "f32": ">f",
}

RawValue = int | float | str


def _swap_bytes(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _to_wire_order(words: list[int], byte_order: Order, word_order: Order) -> list[int]:
    """Turn big-endian words into the device's layout (the transform is its own inverse)."""
    if byte_order == "little":
        words = [_swap_bytes(w) for w in words]
    if word_order == "little":
        words.reverse()
    return words


def make_decoder(
    data_type: DataType, count: int, byte_order: Order, word_order: Order
) -> Callable[[Sequence[int], int], RawValue]:
    """Build a function decoding `count` registers at an offset into a raw (unscaled) value.

    The common cases (single big-endian register) avoid struct entirely: decoding runs once per
    point per poll, thousands of times a second on a large fleet.
    """
    if data_type == "string":

        def decode_string(regs: Sequence[int], at: int) -> str:
            words = _to_wire_order(list(regs[at : at + count]), byte_order, "big")
            data = struct.pack(f">{count}H", *words)
            return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip()

        return decode_string

    if count == 1 and byte_order == "big":
        if data_type == "i16":

            def decode_i16(regs: Sequence[int], at: int) -> int:
                word = regs[at]
                return word - 0x10000 if word & 0x8000 else word

            return decode_i16

        def decode_u16(regs: Sequence[int], at: int) -> int:
            return regs[at]

        return decode_u16

    fmt = struct.Struct(_STRUCT_FORMAT[data_type])

    def decode_struct(regs: Sequence[int], at: int) -> RawValue:
        words = _to_wire_order(list(regs[at : at + count]), byte_order, word_order)
        value: RawValue = fmt.unpack(struct.pack(f">{count}H", *words))[0]
        return value

    return decode_struct


def encode_value(
    data_type: DataType, value: RawValue, count: int, byte_order: Order, word_order: Order
) -> list[int]:
    """Encode one raw (already unscaled) value into the device's registers."""
    if data_type == "string":
        data = str(value).encode("utf-8")[: count * 2].ljust(count * 2, b"\x00")
        words = list(struct.unpack(f">{count}H", data))
        return _to_wire_order(words, byte_order, "big")
    fmt = _STRUCT_FORMAT[data_type]
    if data_type == "f32":
        packed = struct.pack(fmt, float(value))
    else:
        if not isinstance(value, int):
            raise TypeError(f"{data_type} needs an integer, got {value!r}")
        packed = struct.pack(fmt, value)
    words = list(struct.unpack(f">{count}H", packed))
    return _to_wire_order(words, byte_order, word_order)


def scale_decimals(scale: float) -> int:
    """Decimal places worth keeping after multiplying by `scale` (0.01 -> 2), to drop float noise."""
    if scale == 0 or float(scale).is_integer():
        return 0
    return max(0, math.ceil(-math.log10(abs(scale)) - 1e-9)) + 1

"""A profile's status decoding as one generated function: registers -> (values, faults).

Why generated: this runs on every poll of every siren. Calling one closure per point (18 calls
for the generic controller) and then testing every fault rule against the decoded dict cost
8.6 us per poll hot and several times that cache-cold at one poll per siren per 10 s; one
straight-line function with the constants folded in costs 2.9 us (tests/test_modbus_decode.py
holds it to the per-point reference decoders on random registers). Faults of a bitfield are
found with two mask tests on the word, so a healthy report costs one comparison per bitfield.

Only shapes whose code is obvious are generated (single registers, 32-bit integers and floats,
big-endian bytes; strings are decoded once per distinct content); any other point (little-
endian bytes) calls its reference decoder from the generated code. Only our own variable
names and values checked by the profile schema (identifiers, integers, floats) reach the
source; labels are looked up in dicts passed in, never written into it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from siren_gateway.model import NO_FAULTS, Value, shared_faults

if TYPE_CHECKING:
    from siren_gateway.profiles.modbus import CompiledPoint, FaultRule

StatusDecoder = Callable[[Sequence[Sequence[int]]], tuple[dict[str, Value], frozenset[str]]]
STRING_CACHE_SIZE = 64  # distinct contents remembered per string point (bounded whatever comes)


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.values: list[tuple[str, str]] = []  # (point name, local holding its value)
        self.late: list[str] = []  # reference decoders, which write into the dict
        self.namespace: dict[str, Any] = {
            "shared_faults": shared_faults, "NO_FAULTS": NO_FAULTS,
            "pack_words": struct.Struct(">HH").pack, "unpack_f32": struct.Struct(">f").unpack}

    def emit(self, line: str, depth: int = 1) -> None:
        self.lines.append("    " * depth + line)

    def value(self, name: str, expression: str) -> None:
        """A point's value, kept in a local until the dict is built in one go."""
        local = f"l{len(self.values)}"
        self.values.append((name, local))
        self.emit(f"{local} = {expression}")

    def constant(self, value: Any) -> str:
        """A name in the function's namespace bound to `value` (for objects, not literals)."""
        name = f"k{len(self.namespace)}"
        self.namespace[name] = value
        return name


def compile_status_decoder(points: Sequence[CompiledPoint], fault_rules: Sequence[FaultRule]
                           ) -> StatusDecoder:
    src = _Source()
    blocks = sorted({p.block_index for p in points})
    src.lines.append("def decode(blocks):")
    for index in blocks:
        src.emit(f"r{index} = blocks[{index}]")
    src.emit("found = None")
    found_from_words: set[str] = set()
    for point in points:
        if _emit_point(src, point, _bit_fault_masks(point, fault_rules)):
            found_from_words |= {b.name for b in (point.spec.bits or {}).values()}
    # One dict display with constant keys: built at its final size in one step, where 29
    # insertions into an empty dict resized it three times.
    src.emit("out = {" + ", ".join(f"{name!r}: {local}" for name, local in src.values) + "}")
    for line in src.late:
        src.emit(line)
    for rule in fault_rules:
        if rule.point in found_from_words:
            continue  # found from the word above
        when = src.constant(rule.when)
        src.emit(f"if out.get({rule.point!r}) == {when}:")
        src.emit(f"found = (found or []) + [{rule.fault!r}]", 2)
    src.emit("return out, (shared_faults(frozenset(found)) if found else NO_FAULTS)")
    exec("\n".join(src.lines), src.namespace)
    decoder: StatusDecoder = src.namespace["decode"]
    return decoder


def _bit_fault_masks(point: CompiledPoint, fault_rules: Sequence[FaultRule]
                     ) -> tuple[int, int, list[tuple[int, bool, str]]]:
    """(bits that are faults when set, bits that are faults when clear, [(bit, when, fault)])."""
    rules_by_point: dict[str, list[FaultRule]] = {}
    for rule in fault_rules:
        rules_by_point.setdefault(rule.point, []).append(rule)
    when_set = when_clear = 0
    found: list[tuple[int, bool, str]] = []
    for bit, spec in (point.spec.bits or {}).items():
        for rule in rules_by_point.get(spec.name, []):
            if rule.when is True:
                when_set |= 1 << bit
            elif rule.when is False:
                when_clear |= 1 << bit
            else:
                continue  # a bit compared with a number never matches (as in faults())
            found.append((bit, bool(rule.when), rule.fault))
    return when_set, when_clear, found


def _emit_point(src: _Source, point: CompiledPoint,
                bit_faults: tuple[int, int, list[tuple[int, bool, str]]]) -> bool:
    """Write the point's code; True when it also finds the faults of its bits."""
    spec = point.spec
    regs, at = f"r{point.block_index}", point.offset
    big_bytes = (point.byte_order == "big")
    name = spec.name
    scaled = spec.scale != 1.0 or spec.offset != 0.0
    if spec.type == "bitfield" and big_bytes and spec.bits is not None:
        src.emit(f"w = {regs}[{at}]")
        for bit, bit_spec in spec.bits.items():
            src.value(bit_spec.name, f"(w & {1 << bit}) != 0")
        when_set, when_clear, rules = bit_faults
        if rules:
            src.emit(f"if w & {when_set} or ~w & {when_clear}:")
            for bit, when, fault in rules:
                test = f"w & {1 << bit}" if when else f"not w & {1 << bit}"
                src.emit(f"if {test}: found = (found or []) + [{fault!r}]", 2)
        return True
    if spec.type == "string":
        # A string (firmware, serial) seldom changes: decoded once per distinct content.
        cache, reference = src.constant({}), src.constant(point.decode_into)
        src.emit(f"t = tuple({regs}[{at}:{at + spec.register_count}])")
        src.emit(f"x = {cache}.get(t)")
        src.emit("if x is None:")
        src.emit("x = {}", 2)
        src.emit(f"{reference}({regs}, x)", 2)
        src.emit(f"x = x[{name!r}]", 2)
        src.emit(f"if len({cache}) < {STRING_CACHE_SIZE}: {cache}[t] = x", 2)
        src.value(name, "x")
        return False
    raw: str | None = None
    if spec.type == "f32" and big_bytes and point.labels is None:
        high, low = (at, at + 1) if point.word_order == "big" else (at + 1, at)
        src.emit(f"v = unpack_f32(pack_words({regs}[{high}], {regs}[{low}]))[0]")
        # float32 carries ~7 significant digits; the rest is noise (as the reference drops it)
        src.emit("v = float(f'{v:.7g}')")
        src.value(name, f"round(v * {spec.scale!r} + {spec.offset!r}, {point.decimals})"
                  if scaled else "v")
        return False
    if spec.type in ("u16", "i16") and big_bytes:
        raw = f"{regs}[{at}]"
    elif spec.type in ("u32", "i32") and big_bytes:
        high, low = (at, at + 1) if point.word_order == "big" else (at + 1, at)
        raw = f"({regs}[{high}] << 16 | {regs}[{low}])"
    if raw is None or (spec.bits is not None):
        reference = src.constant(point.decode_into)
        src.late.append(f"{reference}({regs}, out)")
        return False
    src.emit(f"v = {raw}")
    if spec.type == "i16":
        src.emit("if v & 32768: v -= 65536")
    elif spec.type == "i32":
        src.emit("if v & 2147483648: v -= 4294967296")
    if point.labels is not None:
        labels = src.constant(point.labels)
        src.emit(f"x = {labels}.get(v)")
        src.value(name, "x if x is not None else f'unknown_{v}'")
    elif scaled and (divisor := _decimal_divisor(spec.scale, spec.offset)) is not None:
        # An integer over a power of ten is already the nearest float to the decimal, which
        # is what the reference's round() of the product gives: a division instead (~0.3 us).
        src.value(name, f"v / {divisor}")
    elif scaled:
        src.value(name, f"round(v * {spec.scale!r} + {spec.offset!r}, {point.decimals})")
    else:
        src.value(name, "v")
    return False


def _decimal_divisor(scale: float, offset: float) -> int | None:
    """10**k when `scale` is exactly the float 10**-k (0.1, 0.01, ...) and there is no
    offset, else None."""
    if offset != 0.0 or not 0.0 < scale < 1.0:
        return None
    for divisor in (10, 100, 1_000, 10_000, 100_000, 1_000_000):
        if scale == 1.0 / divisor:
            return divisor
    return None

"""The gateway's Modbus path against simulated controllers over real TCP sockets.

The simulators run in their own process; what the gateway believes is compared with the
physical truth reported by the simulators' control API.
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from simulators.sitegen import generate_site
from siren_gateway.config.links import ModbusRtuOverTcpLink
from siren_gateway.config.site import Site
from siren_gateway.gateway import Gateway
from siren_gateway.links.modbus import COMMAND_PRIORITY, POLL_PRIORITY, ModbusEndpoint, ModbusSirenLink
from siren_gateway.live.fleet import Reachability
from siren_gateway.model import Command, CommandKind, LinkError
from tests.conftest import StartDistrict, wait_until

StartGateway = Callable[[Site], Awaitable[Gateway]]
COMPARED = ("battery_voltage", "mains_present", "state", "current_signal", "firmware",
            "charger_state", "activation_counter", "amplifier_1_fault", "cabinet_door_open")


def fresh(gateway: Gateway, siren_id: str, after: datetime) -> bool:
    state = gateway.fleet.states[siren_id]
    return state.last_seen is not None and state.last_seen > after


async def test_polled_values_equal_the_simulators_truth(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    district = start_district(generate_site(8, poll_interval_s=0.3))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 8, 10, "all sirens online")
    await district.control.set_battery("s00003", 23.45)
    await district.control.inject("s00005", "door_open")
    moment = datetime.now(UTC)
    await wait_until(lambda: all(fresh(gateway, f"s{i:05d}", moment) for i in range(1, 9)), 5,
                     "a poll after the changes")
    for i in range(1, 9):
        siren_id = f"s{i:05d}"
        truth = (await district.control.truth(siren_id))["values"]
        believed = gateway.fleet.states[siren_id].sample
        assert believed is not None
        for name in COMPARED:
            assert believed.values[name] == truth[name], (siren_id, name)
        assert believed.device_time is not None
        assert abs(believed.device_time.timestamp() - truth["device_clock"]) <= 2
    assert gateway.fleet.states["s00003"].sample.values["battery_voltage"] == 23.45  # type: ignore[union-attr]
    assert gateway.fleet.states["s00005"].faults == {"door_open"}


@pytest.mark.parametrize(("fault", "options", "expected"), [
    ("mains_loss", {}, "mains_lost"),
    ("amplifier_fault", {"amplifier": 3}, "amplifier_fault"),
    ("door_open", {}, "door_open"),
    ("local_activation", {"signal": "growl_test"}, "local_activation"),
])
async def test_injected_faults_reach_the_live_state_within_two_poll_intervals(
        start_district: StartDistrict, gateways: StartGateway, fault: str,
        options: dict[str, Any], expected: str) -> None:
    interval = 0.5
    district = start_district(generate_site(3, poll_interval_s=interval))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 3, 10, "all sirens online")
    state = gateway.fleet.states["s00002"]
    assert expected not in state.faults
    await district.control.inject("s00002", fault, **options)
    before = state.polls_ok
    await wait_until(lambda: expected in state.faults, 10 * interval, f"{expected} seen")
    # Counted in polls, not seconds (a loaded machine stretches seconds): the first poll after
    # the change sees it, or the second if one was already on its way.
    assert state.polls_ok - before <= 2
    assert not gateway.fleet.states["s00001"].faults  # the others are untouched


async def test_a_silent_siren_goes_offline_and_comes_back(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    district = start_district(generate_site(3, poll_interval_s=0.2, timeout_s=0.3))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 3, 10, "all sirens online")
    state = gateway.fleet.states["s00001"]
    await district.control.inject("s00001", "no_response")
    await wait_until(lambda: state.reachability is Reachability.OFFLINE, 5, "offline")
    assert state.state == "unknown"  # its last answer is not presented as the present
    assert state.last_known_state == "idle"
    assert state.last_error is not None and "timeout" in state.last_error
    await district.control.inject("s00001", "no_response", active=False)
    await wait_until(lambda: state.reachability is Reachability.ONLINE, 8, "online again")
    assert gateway.fleet.states["s00002"].consecutive_failures == 0


@pytest.mark.parametrize(("fault", "options", "reason"), [
    ("exception", {"code": 4}, "exception"),
    ("garbage", {}, "timeout"),  # pymodbus discards an unparseable frame; the request times out
    ("drop_connection", {}, "disconnected"),
    ("slow", {"delay_s": 1.0}, "timeout"),
])
async def test_bad_answers_are_counted_and_never_disturb_the_others(
        start_district: StartDistrict, gateways: StartGateway, fault: str,
        options: dict[str, Any], reason: str) -> None:
    district = start_district(generate_site(4, poll_interval_s=0.2, timeout_s=0.4))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 4, 10, "all sirens online")
    await district.control.inject("s00004", fault, **options)
    bad = gateway.fleet.states["s00004"]
    await wait_until(lambda: bad.reachability is Reachability.OFFLINE, 8, f"offline by {fault}")
    healthy_before = {sid: s.polls_ok for sid, s in gateway.fleet.states.items() if sid != "s00004"}
    await asyncio.sleep(1.0)
    for siren_id, before in healthy_before.items():
        state = gateway.fleet.states[siren_id]
        assert state.reachability is Reachability.ONLINE
        assert state.polls_ok >= before + 3, siren_id
    reasons = gateway.health()["polls"]["failures_by_reason"]
    assert reasons.get(reason, 0) >= 1, reasons
    await district.control.inject("s00004", fault, active=False)
    await wait_until(lambda: bad.reachability is Reachability.ONLINE, 15, "recovers after fault")


async def test_dead_devices_do_not_slow_the_healthy_ones(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    """With 20 % of devices silent, the healthy devices' poll rate stays within 10 %."""
    count, interval, window = 40, 0.25, 4.0
    district = start_district(generate_site(count, poll_interval_s=interval, timeout_s=0.5))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == count, 15, "all sirens online")
    dead = [f"s{i:05d}" for i in range(1, count + 1) if i % 5 == 0]
    healthy = [sid for sid in gateway.fleet.states if sid not in dead]

    async def healthy_rate() -> float:
        before = sum(gateway.fleet.states[s].polls_ok for s in healthy)
        await asyncio.sleep(window)
        return (sum(gateway.fleet.states[s].polls_ok for s in healthy) - before) / window

    rate_all_alive = await healthy_rate()
    for siren_id in dead:
        await district.control.inject(siren_id, "no_response")
    await wait_until(lambda: all(gateway.fleet.states[s].reachability is Reachability.OFFLINE
                                 for s in dead), 10, "dead sirens offline")
    rate_with_dead = await healthy_rate()
    ratio = rate_with_dead / rate_all_alive
    print(f"healthy polls/s: {rate_all_alive:.1f} all alive, {rate_with_dead:.1f} with 20 % dead "
          f"(ratio {ratio:.3f})")
    assert rate_all_alive == pytest.approx(len(healthy) / interval, rel=0.15)
    assert ratio >= 0.9


async def test_multidrop_line_polls_each_unit(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    district = start_district(generate_site(6, units_per_line=3, poll_interval_s=0.2))
    site = district.site()
    ports = {s.link.port for s in site.config.sirens if isinstance(s.link, ModbusRtuOverTcpLink)}
    assert len(ports) == 2  # six controllers on two RS-485 lines
    gateway = await gateways(site)
    await wait_until(lambda: gateway.fleet.counts()["online"] == 6, 10, "all units online")
    for i in range(1, 7):
        await district.control.set_battery(f"s{i:05d}", 22.0 + i / 10)
    moment = datetime.now(UTC)
    await wait_until(lambda: all(fresh(gateway, f"s{i:05d}", moment) for i in range(1, 7)), 5,
                     "fresh polls")
    for i in range(1, 7):
        sample = gateway.fleet.states[f"s{i:05d}"].sample
        assert sample is not None and sample.values["battery_voltage"] == pytest.approx(22 + i / 10)
    # A dead unit on a shared line costs the others its timeouts, but never their answers.
    await district.control.inject("s00002", "no_response")
    await wait_until(lambda: gateway.fleet.states["s00002"].reachability is Reachability.OFFLINE,
                     10, "dead unit offline")
    await asyncio.sleep(1.0)
    for siren_id in ("s00001", "s00003"):
        assert gateway.fleet.states[siren_id].reachability is Reachability.ONLINE


async def test_serial_rtu_link_reads_a_line_through_pyserial(
        start_district: StartDistrict) -> None:
    """A `modbus_rtu` link, pointed at the simulated serial server through pyserial's socket://."""
    district = start_district(generate_site(2, units_per_line=2))
    site = district.site()
    tcp = site.config.sirens[1].link
    assert isinstance(tcp, ModbusRtuOverTcpLink)
    from siren_gateway.config.links import ModbusRtuSerialLink

    serial = ModbusRtuSerialLink(type="modbus_rtu", device=f"socket://127.0.0.1:{tcp.port}",
                                 unit_id=2, timeout_s=1.0)
    endpoint = ModbusEndpoint(serial, serial.timeout_s, units=2)
    link = ModbusSirenLink("s00002", endpoint, 2, site.modbus_profile("generic_siren_controller"))
    try:
        await district.control.set_battery("s00002", 25.55)
        sample = await link.poll()
        assert sample.values["battery_voltage"] == 25.55
    finally:
        await endpoint.close()


async def test_a_command_is_executed_and_then_seen_in_the_polls(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    district = start_district(generate_site(2, poll_interval_s=0.2))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 2, 10, "online")
    link = gateway.links["s00001"]
    await link.send(Command(CommandKind.SOUND, signal="growl_test", sequence=77))
    truth = await district.control.truth("s00001")
    assert truth["sounding"] and truth["signal"] == "growl_test"
    assert truth["last_command_sequence"] == 77
    state = gateway.fleet.states["s00001"]
    await wait_until(lambda: state.state == "sounding" and state.horn_on, 2, "sounding seen")
    await link.send(Command(CommandKind.STOP, sequence=78))
    await wait_until(lambda: state.state == "idle", 2, "stopped")
    assert state.sample is not None
    assert state.sample.values["last_activation_result"] == "stopped"
    assert not (await district.control.truth("s00002"))["sounding"]  # only the one siren


async def test_a_refused_command_is_an_error_not_a_success(start_district: StartDistrict,
                                                           gateways: StartGateway) -> None:
    district = start_district(generate_site(1, poll_interval_s=0.5))
    gateway = await gateways(district.site())
    link = gateway.links["s00001"]
    await link.send(Command(CommandKind.SOUND, signal="all_clear"))
    with pytest.raises(LinkError) as caught:
        await link.send(Command(CommandKind.SILENT_TEST))  # the controller refuses while sounding
    assert caught.value.reason == "rejected"
    await link.send(Command(CommandKind.STOP))


async def test_commands_jump_ahead_of_queued_polls(start_district: StartDistrict) -> None:
    """On a busy shared line, a command waits for the request in flight, not for the queue."""
    district = start_district(generate_site(3, units_per_line=3))
    site = district.site()
    for siren_id in ("s00001", "s00002", "s00003"):
        await district.control.inject(siren_id, "slow", delay_s=0.2)
    profile = site.modbus_profile("generic_siren_controller")
    first = site.config.sirens[0].link
    assert isinstance(first, ModbusRtuOverTcpLink)
    endpoint = ModbusEndpoint(first, 2.0, units=3)
    links = [ModbusSirenLink(s.id, endpoint, s.link.unit_id, profile) for s in site.config.sirens
             if isinstance(s.link, ModbusRtuOverTcpLink)]
    finished: list[str] = []

    async def poll(link: ModbusSirenLink, tag: str) -> None:
        await link.poll()
        finished.append(tag)

    async def command() -> None:
        await links[0].send(Command(CommandKind.ARM))
        finished.append("command")

    try:
        polls = [asyncio.create_task(poll(links[i % 3], f"poll{i}")) for i in range(5)]
        await asyncio.sleep(0.05)  # poll0 is on the wire, poll1..4 are queued
        await asyncio.gather(command(), *polls)
        # The queue was worked by a drainer task; once it is empty the connection lets go of
        # it (kept, every contended connection of a fleet held a finished task).
        await asyncio.sleep(0)
        assert not [o for o in gc.get_objects() if isinstance(o, asyncio.Task)
                    and o.get_name().startswith("modbus ")]
    finally:
        await endpoint.close()
    assert finished.index("command") == 1, finished
    assert POLL_PRIORITY > COMMAND_PRIORITY


async def test_exception_and_garbage_never_crash_the_gateway(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    """Every comms fault at once on different sirens; the gateway keeps serving the rest."""
    district = start_district(generate_site(6, poll_interval_s=0.2, timeout_s=0.3))
    gateway = await gateways(district.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 6, 10, "online")
    faults: list[tuple[str, str, dict[str, Any]]] = [
        ("s00001", "exception", {"code": 2}), ("s00002", "garbage", {}),
        ("s00003", "drop_connection", {}), ("s00004", "no_response", {}),
        ("s00005", "exception", {"code": 6})]
    for siren_id, fault, options in faults:
        await district.control.inject(siren_id, fault, **options)
    await wait_until(lambda: gateway.fleet.counts()["offline"] == 5, 10, "five offline")
    healthy = gateway.fleet.states["s00006"]
    before = healthy.polls_ok
    await asyncio.sleep(1.0)
    assert healthy.polls_ok >= before + 3
    assert gateway.poller.scheduled() == 6  # every siren still has its next poll coming
    for siren_id, fault, _ in faults:
        await district.control.inject(siren_id, fault, active=False)
    await wait_until(lambda: gateway.fleet.counts()["online"] == 6, 20, "all recover")
    assert math.isfinite(gateway.health()["uptime_s"])


ALTERNATIVE_PROFILE = """
model: acme_ls200
vendor: A made-up vendor with a different register map
protocol: modbus
word_order: little
max_registers_per_read: 16
signal_codes: {preliminary: 11, air_raid: 12, all_clear: 13, growl_test: 19}
sequence_readback: false  # this model cannot report which command it last carried out
points:
  - {name: state, table: holding, address: 1000, type: u16,
     enum: {0: idle, 5: sounding, 6: silent_test, 7: start_pending}}
  - {name: current_signal, table: holding, address: 1001, type: u16, enum: signal_codes}
  - {name: battery_voltage, table: holding, address: 1002, type: u32, scale: 0.001, unit: V}
  - {name: cabinet_temperature, table: holding, address: 1004, type: f32, unit: °C}
  - {name: sounding_current, table: holding, address: 1006, type: i16, scale: 0.1,
     byte_order: little}
  - name: flags
    table: holding
    address: 1007
    type: bitfield
    bits:
      3: {name: mains_present, fault: mains_lost, fault_when: false}
      9: {name: cabinet_door_open, fault: door_open}
  - {name: device_clock, table: holding, address: 1300, type: u32}
  - {name: firmware, table: holding, address: 1302, type: string, length: 4, byte_order: little}
commands:
  address: 2000
  length: 6
  fields:
    code: {offset: 5, type: u16}
    signal: {offset: 0, type: u16}
    sequence: {offset: 1, type: u16}
    start_time: {offset: 2, type: u32}
  encodings:
    sound: {code: 40, params: [signal, start_time]}
    stop: {code: 41}
    reset_faults: {code: 42}
"""


async def test_a_new_controller_model_needs_only_a_profile_file(
        start_district: StartDistrict, gateways: StartGateway, tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "acme-ls200.yaml").write_text(ALTERNATIVE_PROFILE, encoding="utf-8")
    site_dict = generate_site(2, poll_interval_s=0.2)
    for siren in site_dict["sirens"]:
        siren["profile"] = "acme_ls200"
    district = start_district(site_dict, profiles_dir=devices)
    control = district.control
    site = district.site()
    profile = site.modbus_profile("acme_ls200")
    assert [(b.table, b.address, b.count) for b in profile.blocks] == [
        ("holding", 1000, 8), ("holding", 1300, 6)]
    gateway = await gateways(site)
    await wait_until(lambda: gateway.fleet.counts()["online"] == 2, 10, "online")
    await control.set_battery("s00001", 24.123)
    await control.inject("s00001", "mains_loss")
    await control.inject("s00001", "door_open")
    await gateway.links["s00001"].send(Command(CommandKind.SOUND, signal="all_clear"))
    state = gateway.fleet.states["s00001"]
    await wait_until(lambda: state.state == "sounding" and state.faults == {
        "mains_lost", "door_open"}, 3, "new model's status decoded")
    truth = (await control.truth("s00001"))["values"]
    assert state.sample is not None
    values = state.sample.values
    assert values["battery_voltage"] == pytest.approx(truth["battery_voltage"], abs=0.002)
    assert values["current_signal"] == "all_clear"
    assert values["sounding_current"] == truth["sounding_current"] == 14.0
    assert values["cabinet_temperature"] == pytest.approx(truth["cabinet_temperature"])
    assert values["firmware"] == truth["firmware"]
    await gateway.links["s00001"].send(Command(CommandKind.STOP))
    await wait_until(lambda: state.state == "idle", 3, "stopped")


@pytest.mark.parametrize("units_per_line", [1, 3])  # Modbus TCP, RTU over TCP
async def test_register_reads_skip_pymodbus_debug_text_unless_debug_is_on(
        start_district: StartDistrict, units_per_line: int) -> None:
    """pymodbus builds a debug line for every decoded response, logged or not; our clients
    decode register reads to classes whose text is only made when pymodbus debug is on. The
    registers are the same either way."""
    import logging

    district = start_district(generate_site(units_per_line, units_per_line=units_per_line))
    site = district.site()
    link = site.config.sirens[0].link
    assert not isinstance(link, str)
    endpoint = ModbusEndpoint(link, 2.0, units=units_per_line)  # type: ignore[arg-type]
    unit = site.config.sirens[0].link.unit_id  # type: ignore[union-attr]
    pymodbus_log = logging.getLogger("pymodbus")
    level = pymodbus_log.level

    async def both() -> list[Any]:
        async def read(client: Any) -> list[Any]:
            return [await client.read_input_registers(0, count=4, device_id=unit),
                    await client.read_holding_registers(0, count=4, device_id=unit)]
        return await endpoint.submit(POLL_PRIORITY, read)

    try:
        pymodbus_log.setLevel(logging.WARNING)
        quiet = await both()
        assert [str(r) for r in quiet] == ["", ""]
        assert all(len(r.registers) == 4 and not r.isError() for r in quiet)
        pymodbus_log.setLevel(logging.DEBUG)
        loud = await both()
        assert "InputRegisters(" in str(loud[0]) and "registers=[" in str(loud[0])
        assert "HoldingRegisters(" in str(loud[1])
        assert [type(r).__mro__[1].__name__ for r in loud] == [
            "ReadInputRegistersResponse", "ReadHoldingRegistersResponse"]
    finally:
        pymodbus_log.setLevel(level)
        await endpoint.close()

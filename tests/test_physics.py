"""The simulated controller's physics, driven by an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from simulators.physics import SimulatedSiren
from siren_gateway.config.loading import load_default_signals
from siren_gateway.model import Command, CommandKind

T0 = 1_790_000_000.0


@pytest.fixture
def siren() -> SimulatedSiren:
    return SimulatedSiren("s1", {s.id: s for s in load_default_signals()}, now=T0)


def test_battery_discharges_on_mains_loss_and_recharges(siren: SimulatedSiren) -> None:
    full = siren.battery_v
    siren.inject("mains_loss", True, T0)
    siren.advance(T0 + 3600)
    assert siren.battery_v == pytest.approx(full - siren.params.idle_drain_v_per_h)
    values = siren.status_values(T0 + 3600)
    assert values["mains_present"] is False and values["charger_state"] == "off"
    siren.inject("mains_loss", False, T0 + 3600)
    siren.advance(T0 + 7200)
    assert siren.battery_v == pytest.approx(full)  # charged back, capped at float voltage


def test_sounding_follows_the_air_raid_pattern_with_current_only_when_on(
        siren: SimulatedSiren) -> None:
    siren.inject("mains_loss", True, T0)  # on battery, so only the drain moves the voltage
    assert siren.apply(Command(CommandKind.SOUND, signal="air_raid"), T0)
    on = [siren.status_values(T0 + t)["sounding_current"] for t in (0.5, 5.5, 6.5, 11.5, 12.5)]
    assert [float(c) > 0 for c in on] == [True, True, False, False, True]
    assert siren.status_values(T0 + 6.5)["state"] == "sounding"  # in a pause, still sounding
    # 15 cycles of 6 s on / 6 s off: ends 174 s after the start (the last pause is not sound)
    assert siren.status_values(T0 + 173.9)["state"] == "sounding"
    after = siren.status_values(T0 + 174.1)
    assert after["state"] == "idle" and after["last_activation_result"] == "completed"
    assert after["activation_counter"] == 1
    # 90 s of horn at the sounding drain, plus 174.1 s of the controller's own idle drain
    p = siren.params
    drained = p.battery_full_v - siren.battery_v
    expected = 90 * p.sounding_drain_v_per_s + 174.1 / 3600 * p.idle_drain_v_per_h
    assert drained == pytest.approx(expected, rel=1e-6)
    assert [o.started_at for o in siren.onsets] == [T0]


def test_amplifier_faults_latch_and_reduce_current(siren: SimulatedSiren) -> None:
    siren.inject("amplifier_fault", True, T0, amplifier=2)
    siren.apply(Command(CommandKind.SOUND, signal="all_clear"), T0)
    values = siren.status_values(T0 + 1)
    assert values["amplifier_2_fault"] is True
    assert values["sounding_current"] == pytest.approx(3 * siren.params.amplifier_current_a)
    siren.inject("amplifier_fault", False, T0 + 2, amplifier=2)  # repaired, still latched
    assert siren.status_values(T0 + 3)["amplifier_2_fault"] is True
    siren.apply(Command(CommandKind.RESET_FAULTS), T0 + 4)
    assert siren.status_values(T0 + 5)["amplifier_2_fault"] is False


def test_a_siren_with_no_working_amplifier_fails_silently(siren: SimulatedSiren) -> None:
    siren.inject("all_amplifiers_fault", True, T0)
    siren.apply(Command(CommandKind.SOUND, signal="growl_test"), T0)
    assert siren.status_values(T0 + 1)["sounding_current"] == 0
    assert siren.truth(T0 + 1)["sounding"] is False
    assert siren.status_values(T0 + 10)["last_activation_result"] == "failed"
    assert not siren.onsets


def test_start_time_is_honoured_on_the_drifting_device_clock(siren: SimulatedSiren) -> None:
    siren.set_clock_error(offset_s=-2.0, drift_ppm=0, now=T0)  # device clock 2 s behind
    start = datetime.fromtimestamp(T0 + 10, UTC)  # "start at 10 s from now" on its clock
    siren.apply(Command(CommandKind.SOUND, signal="growl_test", start_at=start), T0)
    assert siren.status_values(T0 + 11.9)["state"] == "start_pending"
    assert siren.status_values(T0 + 12.1)["state"] == "sounding"
    assert siren.onsets[0].started_at == pytest.approx(T0 + 12)


def test_clock_drift_and_set_clock(siren: SimulatedSiren) -> None:
    siren.set_clock_error(offset_s=0, drift_ppm=100, now=T0)
    assert siren.device_time(T0 + 10_000) == pytest.approx(T0 + 10_001)
    siren.apply(Command(CommandKind.SET_CLOCK, clock=datetime.fromtimestamp(T0 + 20_000, UTC)),
                T0 + 20_000)
    assert siren.device_time(T0 + 20_000) == pytest.approx(T0 + 20_000)


def test_local_activation_sounds_and_latches(siren: SimulatedSiren) -> None:
    siren.inject("local_activation", True, T0, signal="growl_test")
    values = siren.status_values(T0 + 1)
    assert values["state"] == "sounding" and values["local_activation"] is True
    assert siren.onsets[0].local
    assert siren.status_values(T0 + 60)["local_activation"] is True
    siren.apply(Command(CommandKind.RESET_FAULTS), T0 + 61)
    assert siren.status_values(T0 + 62)["local_activation"] is False


def test_silent_test_is_refused_while_sounding(siren: SimulatedSiren) -> None:
    siren.apply(Command(CommandKind.SOUND, signal="all_clear"), T0)
    assert not siren.apply(Command(CommandKind.SILENT_TEST), T0 + 1)
    siren.apply(Command(CommandKind.STOP), T0 + 2)
    assert siren.status_values(T0 + 3)["last_activation_result"] == "stopped"
    assert siren.apply(Command(CommandKind.SILENT_TEST), T0 + 4)
    assert siren.status_values(T0 + 5)["state"] == "silent_test"

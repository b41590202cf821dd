"""msgspec's fast path for telemetry never accepts what the profile's validator refuses, and
gives exactly its values, faults and timestamp for what both accept."""

from __future__ import annotations

import copy
import json
import random
import time
from typing import Any

import pytest

from simulators.physics import SimulatedSiren
from siren_gateway.config.loading import load_default_signals, load_profiles
from siren_gateway.data import DEFAULT_PROFILES_DIR
from siren_gateway.profiles.mqtt import MqttProfile, PayloadError

ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.5, 2**70, "x", "idle", "", "y" * 300,
                         [], {}, [1], {"a": 1}, 1e308]


def full_report(profile: MqttProfile) -> dict[str, Any]:
    now = time.time()
    values = SimulatedSiren("x", {s.id: s for s in load_default_signals()}, now).status_values(now)
    report: dict[str, Any] = json.loads(profile.encode_telemetry(values, now))
    return report


def leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for key, value in node.items():
        if isinstance(value, dict):
            found.append((*path, key))
            found.extend(leaves(value, (*path, key)))
        else:
            found.append((*path, key))
    return found


def mutate(report: dict[str, Any], rng: random.Random) -> bytes:
    body = copy.deepcopy(report)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(leaves(body))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.3:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    text = json.dumps(body)
    if rng.random() < 0.1:
        text = text.replace("27", "NaN", 1) if "27" in text else text[:-3]
    if rng.random() < 0.05:
        text = text.replace("1e+308", "1e400")
    return text.encode()


@pytest.mark.parametrize("model", ["generic_mqtt_siren"])
def test_the_fast_path_agrees_with_the_validator(model: str) -> None:
    profile = load_profiles(DEFAULT_PROFILES_DIR)[model]
    assert isinstance(profile, MqttProfile)
    report = full_report(profile)
    rng = random.Random(918)
    outcomes = {"both_accept": 0, "both_refuse": 0}
    payloads = [json.dumps(report).encode()] + [mutate(report, rng) for _ in range(3000)]
    for payload in payloads:
        try:
            expected: Any = profile.decode_telemetry(profile.parse_object(payload))
        except PayloadError as exc:
            expected = exc.reason
        fast = profile._fast.decode(payload)
        if isinstance(expected, str):
            assert fast is None, (payload, expected, fast)
            outcomes["both_refuse"] += 1
            with pytest.raises(PayloadError) as caught:  # and the public path names the reason
                profile.decode_telemetry_bytes(payload)
            assert caught.value.reason == expected
            continue
        values, faults, device_time = expected
        got = profile.decode_telemetry_bytes(payload)
        assert got == (values, faults, device_time), payload
        if fast is not None:
            outcomes["both_accept"] += 1
            assert fast == (values, faults, device_time)
    # The mutations reach both sides: many refused, and many still valid (partial reports).
    assert outcomes["both_refuse"] > 1000 and outcomes["both_accept"] > 300, outcomes

"""Site configuration: every class of mistake is an error naming the file, the key and why."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from siren_gateway.cli import main
from siren_gateway.config.common import ConfigError
from siren_gateway.config.loading import load_site
from siren_gateway.data import DEFAULT_PROFILES_DIR, DEMO_CONFIG

DEMO = DEMO_CONFIG


def demo_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["profiles_dir"] = str(DEFAULT_PROFILES_DIR)
    return data


def check(tmp_path: Path, data: dict[str, Any] | str, capsys: pytest.CaptureFixture[str]
          ) -> tuple[int, str, Path]:
    file = tmp_path / "site.yaml"
    text = data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True)
    file.write_text(text, encoding="utf-8")
    code = main(["check-config", str(file)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err, file


def test_demo_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "OK - 20 sirens" in out
    site = load_site(DEMO)
    assert {s.link.type for s in site.config.sirens} == {"modbus_tcp", "modbus_rtu_over_tcp",
                                                        "mqtt"}
    assert any(s.inhibited for s in site.config.sirens)
    assert set(site.signals) >= {"preliminary", "air_raid", "all_clear", "growl_test"}


def _set_port(d: dict[str, Any]) -> None:
    d["sirens"][3]["link"]["port"] = 70000


def _unknown_key(d: dict[str, Any]) -> None:
    d["sirens"][2]["colour"] = "red"


def _duplicate_id(d: dict[str, Any]) -> None:
    d["sirens"][5]["id"] = d["sirens"][1]["id"]


def _unknown_zone(d: dict[str, Any]) -> None:
    d["sirens"][4]["zones"] = ["xuanwumen", "atlantis"]


def _unknown_profile(d: dict[str, Any]) -> None:
    d["sirens"][6]["profile"] = "acme_9000"


def _duplicate_zone(d: dict[str, Any]) -> None:
    d["zones"].append(copy.deepcopy(d["zones"][0]))


def _shared_address(d: dict[str, Any]) -> None:
    d["sirens"][7]["link"] = copy.deepcopy(d["sirens"][0]["link"])


def _bad_link_type(d: dict[str, Any]) -> None:
    d["sirens"][0]["link"]["type"] = "carrier_pigeon"


def _missing_key(d: dict[str, Any]) -> None:
    del d["sirens"][8]["location"]


def _bad_latitude(d: dict[str, Any]) -> None:
    d["sirens"][9]["location"]["lat"] = 123.0


def _unknown_top_level(d: dict[str, Any]) -> None:
    d["sirenz"] = []


def _bad_override(d: dict[str, Any]) -> None:
    d["alerts"] = {"overrides": [{"rule": "battery_lwo", "zone": "hongshan", "below": 22}]}


def _override_unknown_zone(d: dict[str, Any]) -> None:
    d["alerts"] = {"overrides": [{"rule": "door_open", "zone": "atlantis", "enabled": False}]}


def _first_mqtt(d: dict[str, Any]) -> int:
    return next(i for i, s in enumerate(d["sirens"]) if s["link"]["type"] == "mqtt")


def _mqtt_link_on_modbus_profile(d: dict[str, Any]) -> None:
    d["sirens"][0]["link"] = {"type": "mqtt"}


def _mqtt_without_broker(d: dict[str, Any]) -> None:
    del d["mqtt"]


def _mqtt_same_device(d: dict[str, Any]) -> None:
    first = _first_mqtt(d)
    d["sirens"][first]["link"]["device_id"] = "lte-7"
    d["sirens"][first + 1]["link"]["device_id"] = "lte-7"


def _mqtt_bad_prefix(d: dict[str, Any]) -> None:
    d["mqtt"]["topic_prefix"] = "sirens/#"


def _tiles_without_xy(d: dict[str, Any]) -> None:
    d["map"] = {"tile_url": "http://tiles.lan/{z}/tile.png"}


def _bad_asset(d: dict[str, Any]) -> None:
    d["sirens"][1]["asset"] = {"mount_height_m": -3}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_mqtt_link_on_modbus_profile, "sirens[0].profile: profile 'generic_siren_controller' "
                                       "speaks modbus, but the link is mqtt"),
        (_mqtt_without_broker, "sirens[11].link: an MQTT siren needs the site's 'mqtt' broker"),
        (_mqtt_same_device, "sirens[12].link.device_id: MQTT device id 'lte-7' is also siren"),
        (_mqtt_bad_prefix, "mqtt.topic_prefix: String should match pattern"),
        (_set_port, "sirens[3].link.port: Input should be less than or equal to 65535 (got 70000)"),
        (_unknown_key, "sirens[2].colour: unknown key"),
        (_duplicate_id, "sirens[5].id: duplicate siren id 'xwm-02'"),
        (_unknown_zone, "sirens[4].zones[1]: unknown zone 'atlantis'"),
        (_unknown_profile, "sirens[6].profile: unknown profile 'acme_9000'"),
        (_duplicate_zone, "zones[6].id: duplicate zone id 'xuanwumen'"),
        (_shared_address, "sirens[7].link: same endpoint and unit id as siren 'xwm-01'"),
        (_bad_link_type, "sirens[0].link: Input tag 'carrier_pigeon'"),
        (_missing_key, "sirens[8].location: Field required"),
        (_bad_latitude, "sirens[9].location.lat: Input should be less than or equal to 90"),
        (_unknown_top_level, "sirenz: unknown key"),
        (_bad_override, "alerts.overrides[0].rule: unknown rule 'battery_lwo'"),
        (_override_unknown_zone, "alerts.overrides[0].zone: unknown zone 'atlantis'"),
        (_tiles_without_xy, "map: Value error, tile_url: needs {x}, {y}"),
        (_bad_asset, "sirens[1].asset.mount_height_m: Input should be greater than or equal to 0"),
    ],
)
def test_each_mistake_is_an_error_with_file_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, expected: str
) -> None:
    data = demo_data()
    mutate(data)
    code, output, file = check(tmp_path, data, capsys)
    assert code == 1
    assert f"{file}: {expected}" in output


def test_yaml_syntax_error_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    code, output, file = check(tmp_path, "site:\n  name: x\nsirens: [\n", capsys)
    assert code == 1
    assert f"{file}: line " in output and "invalid YAML" in output


def test_duplicate_yaml_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = DEMO.read_text(encoding="utf-8").replace(
        "poll_interval_s: 2\n", "poll_interval_s: 2\n    poll_interval_s: 60\n", 1)
    text = text.replace("site:\n", f"profiles_dir: {DEFAULT_PROFILES_DIR}\nsite:\n", 1)
    code, output, _ = check(tmp_path, text, capsys)
    assert code == 1
    assert "duplicate key 'poll_interval_s'" in output


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    data = demo_data()
    _unknown_zone(data)
    _unknown_profile(data)
    file = tmp_path / "site.yaml"
    file.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_site(file)
    assert [p.path for p in caught.value.problems] == ["sirens[4].zones[1]", "sirens[6].profile"]


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_a_broken_profile_is_reported_with_its_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    profiles = tmp_path / "devices"
    profiles.mkdir()
    text = (DEFAULT_PROFILES_DIR / "generic-siren-controller.yaml").read_text(encoding="utf-8")
    (profiles / "broken.yaml").write_text(text.replace("type: i16", "type: i17", 1),
                                          encoding="utf-8")
    data = demo_data()
    data["profiles_dir"] = str(profiles)
    code, output, _ = check(tmp_path, data, capsys)
    assert code == 1
    assert f"{profiles / 'broken.yaml'}: points[8].type" in output


def test_a_value_json_cannot_carry_is_an_error_and_dates_still_parse(tmp_path: Path) -> None:
    """The site is validated from JSON text: YAML's dates become ISO strings pydantic reads
    back; anything else JSON lacks (binary, here) is refused, never silently changed."""
    text = DEMO.read_text(encoding="utf-8").replace(
        "site:\n", f"profiles_dir: {DEFAULT_PROFILES_DIR}\nsite:\n", 1)
    file = tmp_path / "site.yaml"
    file.write_text(text, encoding="utf-8")
    site = load_site(file)
    plan = next(p for p in site.config.schedules if p.exclusions)
    assert plan.exclusions[0].isoformat() == "2027-01-06"
    file.write_text(text.replace("site:\n", "extra_blob: !!binary aGVsbG8=\nsite:\n", 1),
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_site(file)
    assert "unsupported value: bytes values are not allowed" in str(caught.value)

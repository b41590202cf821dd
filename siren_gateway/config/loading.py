"""Reading a site file: YAML with duplicate keys refused, validation into models, profiles and
signals loaded, every cross-reference checked; each problem named with its key path.
"""

from __future__ import annotations

import gc
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from siren_gateway.config.common import ConfigError, ConfigProblem
from siren_gateway.config.links import LINK_TYPES, MqttLink, endpoint_key
from siren_gateway.config.plans import plan_problems
from siren_gateway.config.signals import SignalConfig
from siren_gateway.config.site import Site, SiteConfig
from siren_gateway.data import DEFAULT_PROFILES_DIR, DEFAULT_SIGNALS_FILE
from siren_gateway.profiles.modbus import DeviceProfile, parse_profile

# libyaml's parser where PyYAML was built with it: for a 6,000-siren site a third less memory
# at the peak and 3x faster than the pure-Python one (measured with bench/memory.py).
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc]
    """PyYAML keeps the last of two equal keys silently; in a safety config that is an error."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [ConfigProblem("", f"{where}invalid YAML: {problem}")]) from exc


def format_location(loc: tuple[int | str, ...]) -> str:
    """('sirens', 3, 'link', 'modbus_tcp', 'port') -> 'sirens[3].link.port'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in LINK_TYPES and i > 0 and loc[i - 1] == "link":
            continue  # pydantic names the union member it tried; the user never wrote it
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from_validation(exc: ValidationError) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        problems.append(ConfigProblem(format_location(tuple(err["loc"])), message))
    return problems


def load_profile_file(file: Path) -> DeviceProfile:
    data = read_yaml(file)
    try:
        return parse_profile(data, file)
    except ValidationError as exc:
        raise ConfigError(file, problems_from_validation(exc)) from exc


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    profiles: dict[str, DeviceProfile] = {}
    for file in sorted(directory.glob("*.yaml")):
        profile = load_profile_file(file)
        if profile.name in profiles:
            raise ConfigError(file, [ConfigProblem("model", f"model {profile.name!r} is defined "
                                                   f"twice (also in {profiles[profile.name].source})")])
        profiles[profile.name] = profile
    return profiles


def load_default_signals() -> list[SignalConfig]:
    data = read_yaml(DEFAULT_SIGNALS_FILE)
    try:
        return [SignalConfig.model_validate(item) for item in data["signals"]]
    except ValidationError as exc:
        raise ConfigError(DEFAULT_SIGNALS_FILE, problems_from_validation(exc)) from exc


def _check_references(
    config: SiteConfig, profiles: dict[str, DeviceProfile], signals: dict[str, SignalConfig]
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    zone_ids: set[str] = set()
    for i, zone in enumerate(config.zones):
        if zone.id in zone_ids:
            problems.append(ConfigProblem(f"zones[{i}].id", f"duplicate zone id {zone.id!r}"))
        zone_ids.add(zone.id)
    siren_ids: set[str] = set()
    units: dict[tuple[str, int], str] = {}
    devices: dict[str, str] = {}
    for i, siren in enumerate(config.sirens):
        if siren.id in siren_ids:
            problems.append(ConfigProblem(f"sirens[{i}].id", f"duplicate siren id {siren.id!r}"))
        siren_ids.add(siren.id)
        for j, zone_id in enumerate(siren.zones):
            if zone_id not in zone_ids:
                problems.append(ConfigProblem(f"sirens[{i}].zones[{j}]", f"unknown zone {zone_id!r}"))
        profile = profiles.get(siren.profile)
        if profile is None:
            known = ", ".join(sorted(profiles)) or "none"
            problems.append(ConfigProblem(f"sirens[{i}].profile",
                                          f"unknown profile {siren.profile!r} (known: {known})"))
        link = siren.link
        wants = "mqtt" if isinstance(link, MqttLink) else "modbus"
        if profile is not None and profile.protocol != wants:
            problems.append(ConfigProblem(
                f"sirens[{i}].profile", f"profile {siren.profile!r} speaks {profile.protocol}, "
                f"but the link is {link.type}"))
        if isinstance(link, MqttLink):
            device = link.device_id or siren.id
            if device in devices:
                problems.append(ConfigProblem(f"sirens[{i}].link.device_id",
                                              f"MQTT device id {device!r} is also siren "
                                              f"{devices[device]!r}'s"))
            devices[device] = siren.id
            if config.mqtt is None:
                problems.append(ConfigProblem(f"sirens[{i}].link",
                                              "an MQTT siren needs the site's 'mqtt' broker section"))
            continue
        unit = (endpoint_key(link), link.unit_id)
        if unit in units:
            problems.append(ConfigProblem(
                f"sirens[{i}].link",
                f"same endpoint and unit id as siren {units[unit]!r}: two sirens cannot share a "
                "Modbus address"))
        units[unit] = siren.id
    alerts = config.alerts
    rules = {*alerts.thresholds, *alerts.faults, "offline", "clock_skew", "activation_failed",
             "disarmed"}
    for i, override in enumerate(alerts.overrides):
        where = f"alerts.overrides[{i}]"
        if override.rule not in rules:
            problems.append(ConfigProblem(f"{where}.rule", f"unknown rule {override.rule!r} "
                                          f"(known: {', '.join(sorted(rules))})"))
        if override.zone is not None and override.zone not in zone_ids:
            problems.append(ConfigProblem(f"{where}.zone", f"unknown zone {override.zone!r}"))
        if override.siren is not None and override.siren not in siren_ids:
            problems.append(ConfigProblem(f"{where}.siren", f"unknown siren {override.siren!r}"))
    for i, hook in enumerate(alerts.webhooks):
        for j, zone_id in enumerate(hook.zones):
            if zone_id not in zone_ids:
                problems.append(ConfigProblem(f"alerts.webhooks[{i}].zones[{j}]",
                                              f"unknown zone {zone_id!r}"))
    usernames: set[str] = set()
    for i, user in enumerate(config.users):
        if user.username in usernames:
            problems.append(ConfigProblem(f"users[{i}].username",
                                          f"duplicate user {user.username!r}"))
        usernames.add(user.username)
    for i, plan in enumerate(config.schedules):
        problems += plan_problems(plan, signals, siren_ids, zone_ids, f"schedules[{i}]")
    used_profiles = {s.profile for s in config.sirens}
    for profile in profiles.values():
        if profile.name not in used_profiles:
            continue
        for signal_id in profile.spec.signal_codes:
            if signal_id not in signals:
                problems.append(ConfigProblem(
                    "signals", f"profile {profile.name!r} has a code for signal {signal_id!r}, "
                    "which the site does not define"))
    return problems


def _json_scalar(value: Any) -> str:
    """YAML's own scalars that JSON lacks: dates and times, as ISO 8601 (pydantic reads them)."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} values are not allowed in a site file")


def load_site(file: Path) -> Site:
    """Read, validate and cross-check a site file; raise ConfigError listing every problem."""
    file = Path(file)
    data = read_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError(file, [ConfigProblem("", "the file must hold a mapping at the top")])
    try:
        # Validated from JSON text, not from the parsed objects: models built from Python
        # data keep its strings, which pin the freed YAML data's memory for the process's
        # life (bench/memory.py, 6,000 sirens: 40 MiB resident for the site, 20 MiB this way).
        text = json.dumps(data, default=_json_scalar, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(file, [ConfigProblem("", f"unsupported value: {exc}")]) from exc
    del data
    gc.collect()
    try:
        config = SiteConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(file, problems_from_validation(exc)) from exc
    del text
    profiles_dir = (
        (file.parent / config.profiles_dir).resolve() if config.profiles_dir else DEFAULT_PROFILES_DIR
    )
    if not profiles_dir.is_dir():
        raise ConfigError(file, [ConfigProblem("profiles_dir", f"not a directory: {profiles_dir}")])
    profiles = load_profiles(profiles_dir)
    signal_list = config.signals if config.signals is not None else load_default_signals()
    signals = {s.id: s for s in signal_list}
    problems = _check_references(config, profiles, signals)
    if problems:
        raise ConfigError(file, problems)
    used = {s.profile for s in config.sirens}
    return Site(config, {k: v for k, v in profiles.items() if k in used}, signals, file)

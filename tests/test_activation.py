"""Activations over real sockets: results checked against the simulators' physical truth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from simulators.sitegen import generate_site
from siren_gateway.activation.model import ActivationRequest, Targets
from siren_gateway.api.app import create_app
from siren_gateway.config.site import Site
from siren_gateway.errors import Conflict
from siren_gateway.gateway import Gateway
from siren_gateway.security.auth import Principal, Role
from tests.conftest import PASSWORDS, SimulatedDistrict, StartDistrict, wait_until, with_users

StartGateway = Callable[[Site], Awaitable[Gateway]]
FAST = {"sync_lead_s": 1.0, "confirm_timeout_s": 6.0, "confirm_poll_interval_s": 0.3,
        "delivery_grace_s": 1.0, "duplicate_window_s": 60}


class Api:
    """The gateway's HTTP API, logged in as one of the test users."""

    def __init__(self, gateway: Gateway) -> None:
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(
            app=create_app(gateway, manage_lifecycle=False)), base_url="http://gateway")
        self.token: str | None = None

    async def login(self, user: str) -> Api:
        response = await self.http.post("/api/auth/token",
                                        data={"username": user, "password": PASSWORDS[user]})
        response.raise_for_status()
        self.token = response.json()["access_token"]
        return self

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self._headers())

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(path, json=body or {}, headers=self._headers())

    async def patch(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.patch(path, json=body, headers=self._headers())

    async def finished(self, activation_id: int, timeout_s: float = 15) -> dict[str, Any]:
        report: dict[str, Any] = {}

        async def done() -> bool:
            nonlocal report
            report = (await self.get(f"/api/activations/{activation_id}")).json()
            return bool(report["state"] != "running")

        await wait_until(done, timeout_s, f"activation {activation_id} finished", 0.2)
        return report


@pytest.fixture
async def district(start_district: StartDistrict, gateways: StartGateway
                   ) -> AsyncIterator[tuple[SimulatedDistrict, Gateway, Api]]:
    site = with_users(generate_site(6, poll_interval_s=1.0, timeout_s=0.5), **FAST)
    site["sirens"][5]["inhibited"] = True
    site["sirens"][5]["zones"] = ["zone-1"]  # zone-1: s00001 and the inhibited s00006
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 6, 10, "all online")
    api = await Api(gateway).login("operator")
    yield simulated, gateway, api
    await api.http.aclose()


def by_siren(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["siren_id"]: s for s in report["sirens"]}


async def test_every_result_class_matches_the_truth(
        district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, gateway, api = district
    control = simulated.control
    await control.inject("s00002", "amplifier_fault", amplifier=1)
    await control.inject("s00003", "all_amplifiers_fault")
    await control.inject("s00004", "no_response")
    response = await api.post("/api/activations", {
        "targets": {"all": True}, "class": "test", "signal": "growl_test"})
    assert response.status_code == 201, response.text
    report = await api.finished(response.json()["id"])
    results = by_siren(report)
    statuses = {sid: r["status"] for sid, r in results.items()}
    assert statuses == {"s00001": "sounded", "s00002": "failed", "s00003": "failed",
                        "s00004": "no_feedback", "s00005": "sounded", "s00006": "excluded"}
    assert "amplifier_fault" in results["s00002"]["reason"]
    assert "amplifier_fault" in results["s00003"]["reason"]
    assert "did not answer" in results["s00004"]["reason"]  # never sent blind again
    assert report["counts"]["sounded"] == 2 and report["commanded"] == 5
    assert report["sounding_rate"] == 0.4
    # The truth: who physically made sound, who never heard the command.
    truths = {sid: await control.truth(sid) for sid in results}
    for siren_id in ("s00001", "s00005"):
        assert [o["signal"] for o in truths[siren_id]["onsets"]] == ["growl_test"]
    assert not truths["s00003"]["onsets"]  # no working amplifier: silent
    assert truths["s00004"]["commands_received"] == 0
    assert truths["s00006"]["commands_received"] == 0  # inhibited: never commanded
    # Confirmation came from the sirens' own feedback within a couple of seconds of the start.
    assert results["s00001"]["confirm_latency_s"] < 2.0
    # Held in memory afterwards, the finished activation keeps its results but not its
    # finished per-siren tasks (~0.8 kB each).
    held = gateway.activations.activations[response.json()["id"]]
    await wait_until(lambda: held.state != "running" and not held.tasks, 5, "tasks let go")


async def test_synchronised_start_and_clock_skew(
        district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, gateway, api = district
    await simulated.control.set_clock("s00003", offset_s=30.0)  # far out of tolerance
    await wait_until(lambda: (s := gateway.fleet.states["s00003"].sample) is not None
                     and s.device_time is not None
                     and s.device_time.timestamp() - s.received_at.timestamp() > 20, 5,
                     "skew seen by a poll")
    response = await api.post("/api/activations", {
        "targets": {"sirens": ["s00001", "s00002", "s00003", "s00004"]}, "class": "exercise",
        "signal": "growl_test"})
    report = await api.finished(response.json()["id"])
    planned = datetime.fromisoformat(report["start_at"]).timestamp()
    results = by_siren(report)
    assert results["s00003"]["started_by_gateway"] is True
    assert results["s00003"]["clock_skew_s"] > 20
    assert not results["s00001"]["started_by_gateway"]
    onsets = {sid: (await simulated.control.truth(sid))["onsets"][0]["started_at"]
              for sid in ("s00001", "s00002", "s00004")}
    spread = max(onsets.values()) - min(onsets.values())
    assert spread < 0.1, onsets  # on their own clocks, in tolerance: together
    assert all(abs(t - planned) < 0.1 for t in onsets.values())
    skewed = (await simulated.control.truth("s00003"))["onsets"][0]["started_at"]
    assert abs(skewed - planned) < 0.5  # started by the gateway at the moment, not 30 s off


async def test_emergency_needs_the_preview_token_and_is_audited(
        district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, _, api = district
    request = {"targets": {"zones": ["zone-1"]}, "class": "emergency", "signal": "air_raid"}
    refused = await api.post("/api/activations", request)
    assert refused.status_code == 403
    assert "confirmation token" in refused.json()["detail"]["message"]
    preview = (await api.post("/api/activations/preview", request)).json()
    assert [s["id"] for s in preview["sirens"]] == ["s00001"]  # zone-1 holds s00001 and s00006
    assert preview["excluded"] == [{"id": "s00006", "reason": "inhibited"}]
    other = dict(request, signal="preliminary", confirmation_token=preview["confirmation_token"])
    mismatch = await api.post("/api/activations", other)
    assert mismatch.status_code == 403 and "different request" in mismatch.text
    accepted = await api.post("/api/activations",
                              dict(request, confirmation_token=preview["confirmation_token"]))
    assert accepted.status_code == 201, accepted.text
    again = await api.post("/api/activations",
                           dict(request, confirmation_token=preview["confirmation_token"]))
    assert again.status_code == 403  # a token is good for one activation only
    audit = (await api.get("/api/audit", action="activation.create")).json()
    outcomes = [entry["outcome"] for entry in reversed(audit)]
    assert outcomes[0].startswith("refused") and "confirmation token" in outcomes[0]
    assert "accepted" in outcomes and all(e["username"] == "operator" for e in audit)
    await wait_until(lambda: _sounding(simulated, "s00001"), 5, "emergency sounding")
    await api.post(f"/api/activations/{accepted.json()['id']}/cancel")


async def _sounding(simulated: SimulatedDistrict, siren_id: str, signal: str | None = None
                    ) -> bool:
    truth = await simulated.control.truth(siren_id)
    return bool(truth["state"] == "sounding" and (signal is None or truth["signal"] == signal))


async def test_setting_device_clocks(district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, gateway, api = district
    await simulated.control.set_clock("s00002", offset_s=-42.0, drift_ppm=50)
    await simulated.control.set_clock("s00006", offset_s=17.0)  # inhibited: still set
    viewer = await Api(gateway).login("viewer")
    assert (await viewer.post("/api/sirens/set-clock", {"all": True})).status_code == 403
    response = await api.post("/api/sirens/set-clock", {"all": True})
    assert response.status_code == 200, response.text
    assert sorted(response.json()["set"]) == [f"s{i:05d}" for i in range(1, 7)]
    for siren_id in ("s00002", "s00006"):
        offset = (await simulated.control.truth(siren_id))["clock_offset_s"]
        assert abs(offset) < 0.1, (siren_id, offset)
    audit = (await api.get("/api/audit", action="sirens.set_clock")).json()
    assert audit[0]["outcome"] == "ok" and audit[0]["details"]["set"] == 6


async def test_an_emergency_preempts_a_test_and_a_test_never_preempts_an_emergency(
        district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, _, api = district
    test = await api.post("/api/activations", {"targets": {"sirens": ["s00001", "s00002"]},
                                              "class": "test", "signal": "all_clear"})
    test_id = test.json()["id"]
    await wait_until(lambda: _sounding(simulated, "s00001", "all_clear"), 5, "test sounding")
    second_test = await api.post("/api/activations", {"targets": {"sirens": ["s00002"]},
                                                     "class": "test", "signal": "growl_test"})
    assert second_test.status_code == 409 and "busy" in second_test.text
    emergency = {"targets": {"sirens": ["s00001", "s00002"]}, "class": "emergency",
                 "signal": "air_raid"}
    preview = (await api.post("/api/activations/preview", emergency)).json()
    assert {c["activation"] for c in preview["conflicts"]} == {test_id}
    created = await api.post("/api/activations",
                             dict(emergency, confirmation_token=preview["confirmation_token"]))
    assert created.status_code == 201, created.text
    emergency_id = created.json()["id"]
    await wait_until(lambda: _sounding(simulated, "s00002", "air_raid"), 5, "emergency took over")
    test_report = (await api.get(f"/api/activations/{test_id}")).json()
    assert test_report["preempted_by"] == [emergency_id]
    refused = await api.post("/api/activations", {"targets": {"sirens": ["s00002"]},
                                                 "class": "exercise", "signal": "growl_test"})
    assert refused.status_code == 409 and "never pre-empts an emergency" in refused.text
    # all clear is always allowed, even over an emergency
    clear = await api.post("/api/activations", {"targets": {"sirens": ["s00001", "s00002"]},
                                               "class": "exercise", "signal": "all_clear"})
    assert clear.status_code == 201, clear.text
    await wait_until(lambda: _sounding(simulated, "s00001", "all_clear"), 5, "all clear")
    await api.post(f"/api/activations/{clear.json()['id']}/cancel")


async def test_a_scheduled_step_skips_busy_sirens_but_is_refused_when_all_are_busy(
        district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    """A scheduled step (busy_sirens="skip") leaves out a siren busy with another activation;
    when every siren it targets is busy there is nothing to sound, and it is refused, not
    recorded as an activation of nobody."""
    simulated, gateway, api = district
    busy = await api.post("/api/activations", {"targets": {"sirens": ["s00001", "s00002"]},
                                              "class": "test", "signal": "growl_test"})
    assert busy.status_code == 201, busy.text
    busy_id = busy.json()["id"]
    await wait_until(lambda: _sounding(simulated, "s00002"), 5, "test sounding")
    scheduler = Principal("schedule:e2e", Role.OPERATOR)

    def step(*sirens: str) -> ActivationRequest:
        return ActivationRequest(Targets(sirens=sirens), "exercise", signal="growl_test",
                                 busy_sirens="skip")

    with pytest.raises(Conflict, match="every targeted siren is busy") as refused:
        await gateway.activations.activate(scheduler, step("s00001", "s00002"))
    assert f"test activation {busy_id}" in refused.value.message
    commands = (await simulated.control.truth("s00003"))["commands_received"]
    partial = await gateway.activations.activate(scheduler, step("s00001", "s00002", "s00003"))
    assert {s: r.status.value for s, r in partial.results.items()
            if r.status.value == "excluded"} == {"s00001": "excluded", "s00002": "excluded"}
    report = await api.finished(partial.id)
    assert by_siren(report)["s00003"]["status"] == "sounded"
    assert (await simulated.control.truth("s00003"))["commands_received"] > commands
    for activation_id in (busy_id, partial.id):
        await api.post(f"/api/activations/{activation_id}/cancel")


async def test_a_duplicate_request_is_not_sent_twice(
        district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, _, api = district
    request = {"targets": {"sirens": ["s00001"]}, "class": "test", "signal": "growl_test"}
    first = await api.post("/api/activations", request)
    assert first.status_code == 201
    await wait_until(lambda: _sounding(simulated, "s00001"), 5, "sounding")
    commands_before = (await simulated.control.truth("s00001"))["commands_received"]
    second = await api.post("/api/activations", request)
    assert second.status_code == 409
    detail = second.json()["detail"]
    assert detail["activation_id"] == first.json()["id"] and "duplicate" in detail["message"]
    await asyncio.sleep(0.5)
    assert (await simulated.control.truth("s00001"))["commands_received"] == commands_before
    audit = (await api.get("/api/audit", action="activation.create")).json()
    assert audit[0]["outcome"].startswith("refused: duplicate")


async def test_cancel_stops_the_sirens(district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    simulated, _, api = district
    created = await api.post("/api/activations", {"targets": {"sirens": ["s00001", "s00002"]},
                                                 "class": "test", "signal": "all_clear"})
    activation_id = created.json()["id"]
    await wait_until(lambda: _sounding(simulated, "s00002"), 5, "sounding")
    cancelled = await api.post(f"/api/activations/{activation_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    for siren_id in ("s00001", "s00002"):
        truth = await simulated.control.truth(siren_id)
        assert truth["state"] == "idle" and truth["values"]["last_activation_result"] == "stopped"
    audit = (await api.get("/api/audit", action="activation.cancel")).json()
    assert audit[0]["outcome"] == "accepted" and audit[0]["username"] == "operator"


async def test_roles_and_authentication(district: tuple[SimulatedDistrict, Gateway, Api]) -> None:
    _, gateway, operator = district
    anonymous = Api(gateway)
    request = {"targets": {"all": True}, "class": "test", "signal": "growl_test"}
    assert (await anonymous.post("/api/activations", request)).status_code == 401
    assert (await anonymous.get("/api/sirens")).status_code == 401
    bad = await anonymous.http.post("/api/auth/token", data={"username": "operator",
                                                              "password": "wrong"})
    assert bad.status_code == 401
    viewer = await Api(gateway).login("viewer")
    assert (await viewer.get("/api/sirens")).status_code == 200
    assert (await viewer.get("/api/signals")).status_code == 200
    refused = await viewer.post("/api/activations", request)
    assert refused.status_code == 403 and "operator role" in refused.text
    assert (await viewer.get("/api/audit")).status_code == 403
    signals = {s["id"]: s for s in (await viewer.get("/api/signals")).json()}
    assert signals["air_raid"]["name_zh"] == "空袭警报" and signals["air_raid"]["duration_s"] == 174
    logins = (await operator.get("/api/audit", action="auth.login")).json()
    assert any(e["outcome"].startswith("refused") for e in logins)


async def test_a_gateway_restart_mid_activation_leaves_a_truthful_record(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    site = with_users(generate_site(3, poll_interval_s=1.0, timeout_s=0.5), **FAST)
    simulated = start_district(site)
    first = await gateways(simulated.site())
    await wait_until(lambda: first.fleet.counts()["online"] == 3, 10, "online")
    await simulated.control.inject("s00003", "no_response")
    api = await Api(first).login("operator")
    start_at = datetime.now(UTC) + timedelta(seconds=3)
    created = await api.post("/api/activations", {
        "targets": {"all": True}, "class": "test", "signal": "growl_test",
        "start_at": start_at.isoformat()})
    activation_id = created.json()["id"]
    await wait_until(lambda: first.activations.activations[activation_id]
                     .results["s00001"].status == "accepted", 3, "delivered")
    await first.stop()  # the gateway goes away before the start time
    second = await gateways(simulated.site())
    api2 = await Api(second).login("operator")
    report = await api2.finished(activation_id, timeout_s=20)
    results = by_siren(report)
    assert report["interrupted_at"] is not None
    assert results["s00001"]["status"] == "sounded"  # tracking resumed; never re-sent
    assert results["s00003"]["status"] == "no_feedback"
    assert "restarted" in results["s00003"]["reason"]
    truth = await simulated.control.truth("s00001")
    assert truth["commands_received"] == 1 and len(truth["onsets"]) == 1
    assert abs(truth["onsets"][0]["started_at"] - start_at.replace(microsecond=0).timestamp()) < 1.1
    await api.http.aclose()
    await api2.http.aclose()
    _ = time


def test_judge_needs_current_not_just_a_sounding_state() -> None:
    """A controller that claims to sound with no current (an unreported horn fault) failed."""
    from siren_gateway.activation.model import Activation, Status
    from siren_gateway.activation.proof import judge_sample
    from siren_gateway.model import Sample

    now = time.time()
    activation = Activation(1, now, "op", "test", "sound", "air_raid", now - 10, ["s00001"], {})

    def sample(state: str, current: float) -> Sample:
        return Sample("s00001", datetime.now(UTC), {"state": state, "sounding_current": current,
                                                    "last_command_sequence": 1})

    def judge(sample: Sample, sequence: int) -> tuple[Status, str] | None:
        return judge_sample(activation, sample, sequence, 2.0, 6.0, set(), now)

    assert judge(sample("sounding", 14.0), 1) == (Status.SOUNDED, "sounding with 14.0 A")
    verdict = judge(sample("sounding", 0.0), 1)
    assert verdict is not None and verdict[0] is Status.FAILED
    assert "no sounding current" in verdict[1]
    assert judge(sample("sounding", 14.0), 2) is None  # not ours
    activation.start_at = now  # still inside the first on-step: current may not show yet
    assert judge(sample("sounding", 0.0), 1) is None
    # Read late (a stall in the reports), an early report still proves nothing about the
    # current: it is judged at the time it was taken.
    activation.start_at = now - 10
    early = Sample("s00001", datetime.fromtimestamp(now - 9.5, UTC),
                   {"state": "sounding", "sounding_current": 0.0, "last_command_sequence": 1})
    assert judge(early, 1) is None


async def test_finished_activations_leave_memory_but_stay_readable(
        start_district: StartDistrict, gateways: StartGateway) -> None:
    """Memory stays flat over months: only the newest finished activations are held; older
    ones are read back from the database, whole, for the API and a cancel's answer."""
    site = with_users(generate_site(12, poll_interval_s=1.0, timeout_s=0.5),
                      **FAST | {"keep_in_memory": 10, "duplicate_window_s": 0})
    simulated = start_district(site)
    gateway = await gateways(simulated.site())
    await wait_until(lambda: gateway.fleet.counts()["online"] == 12, 10, "all online")
    api = await Api(gateway).login("operator")
    try:
        ids = []
        for siren in sorted(gateway.fleet.states):  # one siren each: none waits for another
            created = await api.post("/api/activations", {
                "targets": {"sirens": [siren]}, "class": "test", "action": "sound",
                "signal": "growl_test"})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        for activation_id in ids:
            assert (await api.finished(activation_id))["counts"]["sounded"] == 1
        # Held while a siren still sounds for it (a later request must see it busy).
        await wait_until(lambda: all(s.state == "idle" for s in gateway.fleet.states.values()),
                         15, "every signal played out")
        engine = gateway.activations
        await wait_until(lambda: len(engine.activations) <= 10, 20, "pruned to keep_in_memory")
        oldest = ids[0]
        assert oldest not in engine.activations
        again = (await api.get(f"/api/activations/{oldest}")).json()
        assert again["id"] == oldest and again["counts"]["sounded"] == 1
        assert [s["status"] for s in again["sirens"]] == ["sounded"]
        listed = (await api.get("/api/activations", limit=12)).json()
        assert [a["id"] for a in listed] == ids[::-1]
        refused = await api.post(f"/api/activations/{oldest}/cancel")
        assert refused.status_code == 409  # finished, not "no such activation"
        # A budget of per-siren results too: one activation of every siren (12 results) leaves
        # only itself and what fits beside it in 20.
        engine.config = engine.config.model_copy(update={"keep_results_in_memory": 20})
        everyone = await api.post("/api/activations", {
            "targets": {"all": True}, "class": "test", "action": "sound", "signal": "growl_test"})
        assert everyone.status_code == 201, everyone.text
        assert (await api.finished(everyone.json()["id"]))["counts"]["sounded"] == 12
        await wait_until(lambda: all(s.state == "idle" for s in gateway.fleet.states.values()),
                         15, "every signal played out")
        await wait_until(lambda: sum(len(a.results) for a in engine.activations.values()) <= 20,
                         20, "pruned to the results budget")
        assert everyone.json()["id"] in engine.activations  # the newest is always held
    finally:
        await api.http.aclose()

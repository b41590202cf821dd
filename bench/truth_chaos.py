"""Truth under chaos: does every result agree with what the sirens physically did?

    python -m bench.truth_chaos                       # the record: >= 500 siren-activations
    python -m bench.truth_chaos --activations 12      # a short run (the test suite's)

A mixed fleet (Modbus TCP and MQTT simulators, a private mosquitto) and a real gateway process
(`siren-gateway run`). Several lanes, each owning a share of the sirens, send activations one
after the other (every class, now and then a silent test, a cancel, and the retry of a failed
emergency) while random, short communication faults hit their sirens: a slow reply, a garbled
reply, a Modbus exception, a reply lost after the write was carried out, a dropped connection,
no answer at all; for MQTT sirens a lost, late or duplicated acknowledgement. Meanwhile the
broker is restarted and the gateway is killed with SIGKILL and started again, at random moments.

Every result is then judged against the simulators' own record of each onset of sound
(tagged with the sequence of the command that started it):
    at most one onset per siren and activation;
    sounded  <=>  the siren started the signal;
    failed / no feedback  =>  it did not (a "not delivered" that sounded is the worst lie);
    cancelled / pre-empted: either is true, but never more than one onset;
    a failed emergency sent again (fresh preview and token) sounds.
It prints the agreement rate and the count of each violation, and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from simulators.launcher import FleetProcess, start_fleet
from simulators.processes import GatewayProcess, Mosquitto
from simulators.sitegen import assign_free_ports, generate_site, write_site
from siren_gateway.activation.model import sequence_of
from siren_gateway.security.auth import hash_password

PASSWORD = "chaos-operator"
SIGNAL = "growl_test"  # 4 s of sound: short rounds
Fault = tuple[str, dict[str, Any]]
MODBUS_FAULTS: list[Fault] = [("slow", {"delay_s": 0.8}), ("garbage", {}),
                              ("exception", {"code": 4}), ("lost_reply", {}),
                              ("drop_connection", {}), ("no_response", {})]
MQTT_FAULTS: list[Fault] = [("lost_reply", {}), ("late_acks", {"delay_s": 1.5}),
                            ("duplicate_acks", {})]


@dataclass
class Tally:
    judged: int = 0
    agreed: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    extra_onsets: int = 0

    def violation(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {detail}")


class Chaos:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.broker = Mosquitto(work)
        self.fleet: FleetProcess | None = None
        self.gateway: GatewayProcess | None = None
        self.sirens: list[str] = []
        self.mqtt: set[str] = set()
        self.token: str | None = None
        self.calm = 0  # lanes retrying a failed emergency ask for no kills meanwhile
        self.chaos_lock = asyncio.Lock()
        self.stop_chaos = asyncio.Event()

    # -- set-up ----------------------------------------------------------------------------

    def start(self) -> None:
        args = self.args
        self.broker.start()
        site = generate_site(args.sirens, poll_interval_s=1.0, timeout_s=0.5,
                             mqtt_sirens=args.mqtt, telemetry_interval_s=2.0,
                             mqtt_broker={"host": "127.0.0.1", "port": self.broker.port,
                                          "topic_prefix": "chaos", "reconnect_max_s": 1.0,
                                          "ack_timeout_s": 1.5})
        site["users"] = [{"username": "chaos", "role": "operator",
                          "password_hash": hash_password(PASSWORD)}]
        site["activation"] = {"sync_lead_s": 2.0, "confirm_timeout_s": 12.0,
                              "confirm_poll_interval_s": 0.3, "delivery_grace_s": 3.0,
                              "duplicate_window_s": 60}
        assign_free_ports(site)
        self.sirens = [s["id"] for s in site["sirens"]]
        self.mqtt = {s["id"] for s in site["sirens"] if s["link"]["type"] == "mqtt"}
        path = write_site(site, self.work / "site.yaml", database=self.work / "gateway.db")
        self.fleet = start_fleet(path, control_port=0)
        self.gateway = GatewayProcess(path, self.work / "gateway.log")
        os.environ.pop("SIREN_GATEWAY_FAILPOINTS", None)  # never inherited by the bench's own
        self.gateway.start()

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.fleet is not None:
            self.fleet.stop()
        self.broker.stop()

    # -- talking to the gateway through its restarts ----------------------------------------

    async def request(self, http: httpx.AsyncClient, method: str, path: str,
                      body: dict[str, Any] | None = None, give_up_s: float = 60.0
                      ) -> httpx.Response:
        """A request that waits out a gateway restart (logging in again when it is back)."""
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                if self.token is None:
                    login = await http.post("/api/auth/token", data={"username": "chaos",
                                                                     "password": PASSWORD})
                    login.raise_for_status()
                    self.token = login.json()["access_token"]
                response = await http.request(method, path, json=body,
                                              headers={"Authorization": f"Bearer {self.token}"})
                if response.status_code == 401:
                    self.token = None
                    continue
                return response
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)

    async def all_online(self, http: httpx.AsyncClient, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            response = await self.request(http, "GET", "/api/sirens")
            if response.status_code == 200 and all(s["online"] for s in response.json()):
                return
            await asyncio.sleep(0.5)
        raise SystemExit("not every siren came online")

    # -- the lanes ----------------------------------------------------------------------------

    async def lane(self, index: int, sirens: list[str], rounds: int) -> None:
        assert self.gateway is not None and self.fleet is not None
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=10) as http, \
                httpx.AsyncClient(base_url=self.fleet.control_url, timeout=10) as control:
            for _ in range(rounds):
                await self.one_round(http, control, sirens)

    async def one_round(self, http: httpx.AsyncClient, control: httpx.AsyncClient,
                        sirens: list[str]) -> None:
        rng = self.rng
        targets = rng.sample(sirens, k=rng.randint(max(1, len(sirens) // 3), len(sirens)))
        klass = rng.choice(["test", "exercise", "emergency"])
        action = "silent_test" if rng.random() < 0.1 and klass != "emergency" else "sound"
        faulted = rng.sample(targets, k=min(len(targets), rng.randint(0, 4)))
        clearers = [asyncio.create_task(self.fault(control, siren_id)) for siren_id in faulted]
        created = await self.activate(http, targets, klass, action)
        if created is not None and rng.random() < 0.1:
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            self.tally.events["cancel"] += 1
            await self.request(http, "POST", f"/api/activations/{created}/cancel")
        await asyncio.gather(*clearers)
        if created is None:
            return
        report = await self.finished(http, created)
        await asyncio.sleep(5.0)  # every signal has played out: the truth is complete
        await self.judge(control, report)
        failed = [r["siren_id"] for r in report["sirens"]
                  if r["status"] in ("failed", "no_feedback")]
        if klass == "emergency" and action == "sound" and failed:
            await self.retry_emergency(http, control, failed)

    async def retry_emergency(self, http: httpx.AsyncClient, control: httpx.AsyncClient,
                              sirens: list[str]) -> None:
        """The operator sends a failed emergency again: with the faults gone, it sounds."""
        self.calm += 1
        try:
            async with self.chaos_lock:  # a restart under way finishes first
                pass
            await self.online(http, sirens, within_s=30)  # as an operator would check
            created = await self.activate(http, sirens, "emergency", "sound")
            if created is None:
                self.tally.violation("retried_emergency_refused", ",".join(sirens))
                return
            report = await self.finished(http, created)
            await asyncio.sleep(5.0)
            await self.judge(control, report)
            self.tally.events["emergency_retries"] += 1
            for result in report["sirens"]:
                if result["status"] != "sounded":
                    self.tally.violation("retried_emergency_not_sounded",
                                         f"activation {created} {result['siren_id']}: "
                                         f"{result['status']} {result['reason']}")
        finally:
            self.calm -= 1

    async def online(self, http: httpx.AsyncClient, sirens: list[str], within_s: float) -> None:
        wanted = set(sirens)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            response = await self.request(http, "GET", "/api/sirens")
            if response.status_code == 200 and all(
                    s["online"] for s in response.json() if s["id"] in wanted):
                return
            await asyncio.sleep(0.3)

    async def activate(self, http: httpx.AsyncClient, sirens: list[str], klass: str,
                       action: str) -> int | None:
        body: dict[str, Any] = {"targets": {"sirens": sirens}, "class": klass, "action": action}
        if action == "sound":
            body["signal"] = SIGNAL
        for _ in range(5):
            if klass == "emergency":
                preview = await self.request(http, "POST", "/api/activations/preview", body)
                if preview.status_code != 200:
                    await asyncio.sleep(0.5)
                    continue
                body["confirmation_token"] = preview.json()["confirmation_token"]
            response = await self.request(http, "POST", "/api/activations", body)
            if response.status_code == 201:
                self.tally.events[f"activations_{klass}"] += 1
                return int(response.json()["id"])
            detail = response.json().get("detail") if response.status_code == 409 else None
            if isinstance(detail, dict) and "activation_id" in detail:
                # Our own request, taken just before a restart cut its answer: the retry is
                # refused as its duplicate, naming it. That one is judged.
                self.tally.events["duplicate_of_own_request"] += 1
                return int(detail["activation_id"])
            # A restart can interrupt the request: it may or may not have been taken.
            self.tally.events[f"refused_{response.status_code}"] += 1
            await asyncio.sleep(1.0)
        return None

    async def finished(self, http: httpx.AsyncClient, activation_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            response = await self.request(http, "GET", f"/api/activations/{activation_id}")
            if response.status_code == 200 and response.json()["state"] != "running":
                result: dict[str, Any] = response.json()
                return result
            await asyncio.sleep(0.5)
        raise SystemExit(f"activation {activation_id} never finished")

    async def fault(self, control: httpx.AsyncClient, siren_id: str) -> None:
        rng = self.rng
        name, options = rng.choice(MQTT_FAULTS if siren_id in self.mqtt else MODBUS_FAULTS)
        self.tally.events[f"fault_{name}"] += 1
        await control.post(f"/sirens/{siren_id}/faults/{name}", json={"active": True, **options})
        await asyncio.sleep(rng.uniform(0.3, 2.5))
        await control.post(f"/sirens/{siren_id}/faults/{name}", json={"active": False})

    # -- chaos above the lanes -----------------------------------------------------------------

    async def havoc(self) -> None:
        rng = self.rng
        assert self.gateway is not None
        while not self.stop_chaos.is_set():
            try:
                async with asyncio.timeout(rng.uniform(4.0, 12.0)):
                    await self.stop_chaos.wait()
                return
            except TimeoutError:
                pass
            async with self.chaos_lock:
                if self.calm:
                    continue
                roll = rng.random()
                if roll < self.args.kill_rate:
                    self.tally.events["gateway_sigkill"] += 1
                    self.gateway.kill()
                    self.gateway.start()
                elif roll < self.args.kill_rate + self.args.broker_rate and self.mqtt:
                    self.tally.events["broker_restart"] += 1
                    self.broker.stop()
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    self.broker.start()

    # -- the truth ------------------------------------------------------------------------------

    async def judge(self, control: httpx.AsyncClient, report: dict[str, Any]) -> None:
        sequence = sequence_of(report["id"])
        for result in report["sirens"]:
            siren_id, status = result["siren_id"], result["status"]
            truth = (await control.get(f"/sirens/{siren_id}")).json()
            onsets = [o for o in truth["onsets"] if o["sequence"] == sequence]
            n = len(onsets)
            tally = self.tally
            tally.judged += 1
            tally.statuses[status] += 1
            what = f"activation {report['id']} {siren_id}: {status} ({result['reason']}), {n} onsets"
            if n > 1:
                tally.extra_onsets += n - 1
                tally.violation("more_than_one_onset", what)
                continue
            if report["action"] == "silent_test":
                agreed = n == 0
            elif status == "sounded":
                agreed = n == 1
            elif status in ("failed", "no_feedback", "excluded"):
                agreed = n == 0
            elif status in ("cancelled", "preempted"):
                agreed = True  # stopped by an operator or an emergency: sound or none is true
            else:
                agreed = False  # pending or accepted after the end: unfinished
            if agreed:
                tally.agreed += 1
            elif status == "sounded":
                tally.violation("sounded_without_onset", what)
            elif status == "failed" and "deliver" in result["reason"]:
                tally.violation("not_delivered_but_sounded", what)
            elif n:
                tally.violation(f"sounded_but_reported_{status}", what)
            else:
                tally.violation(f"unfinished_{status}", what)

    async def run(self) -> Tally:
        args = self.args
        assert self.gateway is not None
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=10) as http:
            await self.all_online(http, 60)
        lanes = max(1, min(args.lanes, len(self.sirens)))
        shares = [self.sirens[i::lanes] for i in range(lanes)]
        rounds = [args.activations // lanes + (i < args.activations % lanes)
                  for i in range(lanes)]
        havoc = asyncio.create_task(self.havoc())
        try:
            await asyncio.gather(*(self.lane(i, shares[i], rounds[i]) for i in range(lanes)))
        finally:
            self.stop_chaos.set()
            await havoc
        return self.tally


def print_summary(tally: Tally, elapsed_s: float) -> None:
    rate = tally.agreed / tally.judged if tally.judged else 0.0
    print(f"siren-activations judged: {tally.judged} in {elapsed_s:.0f} s")
    print(f"results: {dict(sorted(tally.statuses.items()))}")
    print(f"chaos: {dict(sorted(tally.events.items()))}")
    print(f"violations: {dict(tally.violations) or 'none'}")
    for example in tally.examples:
        print(f"  {example}")
    print(f"RATIO agreement {rate:.4f}")
    print(f"RATIO extra_onsets {tally.extra_onsets}")
    print(json.dumps({"judged": tally.judged, "agreed": tally.agreed, "agreement": rate,
                      "extra_onsets": tally.extra_onsets,
                      "violations": sum(tally.violations.values()),
                      "by_kind": dict(tally.violations)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.truth_chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sirens", type=int, default=60)
    parser.add_argument("--mqtt", type=int, default=15, help="how many of them are MQTT")
    parser.add_argument("--activations", type=int, default=54)
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument("--kill-rate", type=float, default=0.25,
                        help="share of chaos ticks (every 4-12 s) that SIGKILL the gateway")
    parser.add_argument("--broker-rate", type=float, default=0.25,
                        help="share of chaos ticks that restart the broker")
    parser.add_argument("--seed", type=int, default=918)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="truth-chaos-") as tmp:
        chaos = Chaos(args, Path(tmp))
        started = time.monotonic()
        try:
            chaos.start()
            tally = asyncio.run(chaos.run())
        finally:
            chaos.close()
        print_summary(tally, time.monotonic() - started)
        if tally.violations:
            kept = Path(tempfile.mkdtemp(prefix="truth-chaos-violations-"))
            shutil.copy(Path(tmp) / "gateway.log", kept / "gateway.log")
            print(f"the gateway's log is kept in {kept / 'gateway.log'}")
    return 1 if tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak: does the gateway's footprint stay flat while a district lives through its day?

    python -m bench.soak                          # the record: 2,000 sirens for 30 minutes
    python -m bench.soak --short                  # the suite's: 120 sirens for 75 s

A real `siren-gateway run` process polls simulated Modbus controllers and receives simulated
MQTT controllers (a private mosquitto). Meanwhile:
    an activation every --activation-every seconds through the API (a test sounding of a few
    sirens, a silent test of a zone, or a short sounding of a zone);
    a scheduled silent test of every siren (a cron plan in the site file), and one silent
    test of every siren by the API at the start of the warm-up, so the reference RSS includes
    the largest activation's working set whatever minute the bench was started at;
    random faults: doors opened, amplifiers failing, batteries sagging, devices that stop
    answering or drop the connection, each cleared again after a while (alerts raised, cleared).
Every --sample-every seconds it samples the gateway's RSS and open descriptors (psutil), its
asyncio tasks, activations and alerts held in memory (/metrics), and the SQLite files' size.

It fails (exit 1) when, after the warm-up, RSS grows by more than --max-rss-growth (the mean
of the last three samples against the first three), or tasks or descriptors grow without
bound (the second half's floor above the first half's by a margin, or a task peak above
what the largest activation can hold). The curves go to a PNG (matplotlib) and the samples
to a JSON file beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import REPO, parse_metrics
from simulators.launcher import FleetProcess, start_fleet
from simulators.processes import GatewayProcess, Mosquitto
from simulators.sitegen import assign_free_ports, generate_site, write_site
from siren_gateway.security.auth import hash_password

PASSWORD = "soak-operator"
MODBUS_FAULTS = ["door_open", "amplifier_fault", "no_response", "drop_connection", "overheat",
                 "slow", "battery"]
MQTT_FAULTS = ["door_open", "amplifier_fault", "silent_disconnect", "battery"]
MiB = 1024 * 1024
# uvicorn closes a connection idle for 5 s; a client reusing it at that moment gets a
# ReadError. Dropping our idle connections sooner avoids the race.
LIMITS = httpx.Limits(keepalive_expiry=1.0)


@dataclass
class Sample:
    t_s: float
    rss_bytes: int
    fds: int
    tasks: float
    activations_in_memory: float
    alerts_in_memory: float
    sqlite_bytes: int
    online: float


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.broker = Mosquitto(work)
        self.fleets: list[FleetProcess] = []
        self.gateway: GatewayProcess | None = None
        self.database = work / "gateway.db"
        self.sirens: list[str] = []
        self.mqtt: set[str] = set()
        self.zones: list[str] = []
        self.events: Counter[str] = Counter()
        self.results: Counter[str] = Counter()  # per-siren activation results, by status
        self.samples: list[Sample] = []
        self.token: str | None = None
        self.started = 0.0

    def start(self) -> None:
        args = self.args
        self.broker.start()
        site = generate_site(args.sirens, poll_interval_s=args.interval, timeout_s=1.0,
                             mqtt_sirens=args.mqtt, telemetry_interval_s=args.interval,
                             mqtt_broker={"host": "127.0.0.1", "port": self.broker.port,
                                          "topic_prefix": "soak"})
        site["users"] = [{"username": "soak", "role": "operator",
                          "password_hash": hash_password(PASSWORD)}]
        site["activation"] = {"duplicate_window_s": 0}  # the soak repeats requests on purpose
        site["schedules"] = [{
            "id": "soak-silent", "name": "Soak silent test", "timezone": "UTC",
            "recurrence": {"type": "cron", "expression": args.schedule_cron},
            "class": "test", "targets": {"all": True},
            "steps": [{"offset_s": 0, "action": "silent_test"}], "grace_s": 30}]
        assign_free_ports(site)
        self.sirens = [s["id"] for s in site["sirens"]]
        self.mqtt = {s["id"] for s in site["sirens"] if s["link"]["type"] == "mqtt"}
        self.zones = [z["id"] for z in site["zones"]]
        path = write_site(site, self.work / "site.yaml", database=self.database)
        processes = max(1, min(args.sim_processes, args.sirens // 200 or 1))
        self.fleets = [start_fleet(path, 0, (i + 1, processes), timeout_s=300)
                       for i in range(processes)]
        self.gateway = GatewayProcess(path, self.work / "gateway.log")
        self.gateway.start()

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for fleet in self.fleets:
            fleet.stop()
        self.broker.stop()

    # -- the API ------------------------------------------------------------------------------

    async def request(self, http: httpx.AsyncClient, method: str, path: str,
                      body: dict[str, Any] | None = None) -> httpx.Response:
        for _ in range(3):
            if self.token is None:
                login = await http.post("/api/auth/token",
                                        data={"username": "soak", "password": PASSWORD})
                login.raise_for_status()
                self.token = login.json()["access_token"]
            response = await http.request(method, path, json=body,
                                          headers={"Authorization": f"Bearer {self.token}"})
            if response.status_code != 401:
                return response
            self.token = None
        raise SystemExit(f"{method} {path}: still 401 after logging in again")

    async def wait_online(self, http: httpx.AsyncClient, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        online = 0.0
        while time.monotonic() < deadline:
            try:
                figures = parse_metrics((await http.get("/metrics")).text)
                online = figures.get('siren_gateway_sirens{reachability="online"}', 0.0)
                if online >= len(self.sirens):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1.0)
        raise SystemExit(f"only {online:.0f}/{len(self.sirens)} sirens online after {within_s} s")

    # -- the day's work ---------------------------------------------------------------------

    async def activations(self, http: httpx.AsyncClient, until: float) -> None:
        rng = self.rng
        first = self.args.warmup > 0
        while time.monotonic() < until:
            roll = rng.random()
            if first:
                # The day's largest activation, once inside the warm-up, so the reference RSS
                # includes its working set. Without it the verdict hung on the minute the
                # bench was started: a 30-minute run whose first scheduled all-siren test
                # fell after the warm-up failed at +6.18 % (+4.7 MiB at that test, then
                # flat), one whose test fell inside passed at +3.67 %. The scheduled tests
                # after the warm-up still show whether each one leaves memory behind.
                body: dict[str, Any] = {"targets": {"all": True}, "action": "silent_test"}
                first = False
            elif roll < 0.5:
                body = {"targets": {"sirens": rng.sample(
                    self.sirens, k=min(len(self.sirens), 20))}, "action": "sound",
                    "signal": "growl_test"}
            elif roll < 0.8:
                body = {"targets": {"zones": [rng.choice(self.zones)]}, "action": "silent_test"}
            else:
                body = {"targets": {"zones": [rng.choice(self.zones)]}, "action": "sound",
                        "signal": "growl_test"}
            body["class"] = "test"
            response = await self.request(http, "POST", "/api/activations", body)
            self.events[f"activation_{response.status_code}"] += 1
            await asyncio.sleep(max(0.0, min(self.args.activation_every, until - time.monotonic())))

    async def faults(self, control: httpx.AsyncClient, seed: int, until: float) -> None:
        """Faults on the sirens this simulator process plays, one every ~fault_every s."""
        rng = random.Random(seed)
        sirens = [t["siren_id"] for t in (await control.get("/sirens")).json()]
        pending: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            siren = rng.choice(sirens)
            fault = rng.choice(MQTT_FAULTS if siren in self.mqtt else MODBUS_FAULTS)
            task = asyncio.create_task(self.one_fault(control, siren, fault,
                                                      rng.uniform(5.0, 40.0)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(rng.uniform(0.5, 2.0) * self.args.fault_every)
        await asyncio.gather(*pending)

    async def one_fault(self, control: httpx.AsyncClient, siren: str, fault: str,
                        hold_s: float) -> None:
        self.events[f"fault_{fault}"] += 1
        if fault == "battery":
            await control.post(f"/sirens/{siren}/battery", json={"voltage": 21.5})
            await asyncio.sleep(hold_s)
            await control.post(f"/sirens/{siren}/battery", json={"voltage": 27.0})
            return
        options = {"delay_s": 1.5} if fault == "slow" else {}
        await control.post(f"/sirens/{siren}/faults/{fault}", json={"active": True, **options})
        await asyncio.sleep(hold_s)
        await control.post(f"/sirens/{siren}/faults/{fault}", json={"active": False})
        if fault == "amplifier_fault":  # latched: an operator's reset clears it
            await control.post(f"/sirens/{siren}/faults/{fault}", json={"active": False})

    async def reset_latched(self, http: httpx.AsyncClient, until: float) -> None:
        """A maintainer resets latched faults now and then, so alerts are cleared too."""
        while time.monotonic() < until:
            await asyncio.sleep(min(60.0, max(0.0, until - time.monotonic())))
            response = await self.request(http, "POST", "/api/commands", {
                "targets": {"all": True}, "command": "reset_faults", "comment": "soak"})
            self.events[f"reset_{response.status_code}"] += 1

    async def sampler(self, http: httpx.AsyncClient, until: float) -> None:
        assert self.gateway is not None and self.gateway.process is not None
        process = psutil.Process(self.gateway.process.pid)
        while True:
            figures = parse_metrics((await http.get("/metrics")).text)
            size = sum(p.stat().st_size for p in self.database.parent.glob(
                self.database.name + "*"))
            sample = Sample(
                t_s=time.monotonic() - self.started, rss_bytes=process.memory_info().rss,
                fds=process.num_fds(), tasks=figures.get("siren_gateway_asyncio_tasks", 0.0),
                activations_in_memory=sum(v for k, v in figures.items()
                                          if k.startswith("siren_gateway_activations{")),
                alerts_in_memory=figures.get("siren_gateway_alerts_in_memory", 0.0),
                sqlite_bytes=size,
                online=figures.get('siren_gateway_sirens{reachability="online"}', 0.0))
            self.samples.append(sample)
            print(f"  {sample.t_s:7.0f} s  RSS {sample.rss_bytes / MiB:7.1f} MiB  fds "
                  f"{sample.fds:5d}  tasks {sample.tasks:5.0f}  activations "
                  f"{sample.activations_in_memory:4.0f}  alerts {sample.alerts_in_memory:4.0f}  "
                  f"SQLite {sample.sqlite_bytes / MiB:7.1f} MiB  online {sample.online:.0f}",
                  flush=True)
            if time.monotonic() >= until:
                return
            await asyncio.sleep(max(0.0, min(self.args.sample_every, until - time.monotonic())))

    async def run(self) -> None:
        assert self.gateway is not None
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=30, limits=LIMITS) as http:
            await self.wait_online(http, 120 + 0.05 * len(self.sirens))
            self.started = time.monotonic()
            until = self.started + self.args.duration
            controls = [httpx.AsyncClient(base_url=f.control_url, timeout=30, limits=LIMITS)
                        for f in self.fleets]
            try:
                await asyncio.gather(
                    self.sampler(http, until), self.activations(http, until),
                    self.reset_latched(http, until),
                    *(self.faults(control, self.args.seed * 100 + i, until)
                      for i, control in enumerate(controls)))
            finally:
                for control in controls:
                    await control.aclose()
            occurrences = (await self.request(
                http, "GET", "/api/schedules/soak-silent/occurrences")).json()
            for occurrence in occurrences:
                if occurrence["fired_at"] is not None:  # not the ones still to come
                    self.events[f"scheduled_{occurrence['state']}"] += 1
                    # ("done" with a step refused once hid that no scheduled test had sounded)
                    if any("error" in step for step in occurrence["steps"]):
                        self.events["scheduled_step_refused"] += 1
            # What the activations reported per siren: the faults explain a few failures and
            # no-feedbacks; hundreds mean the truth broke (a reset every minute once hid the
            # proof of whole activations, and only these counts showed it).
            for summary in (await self.request(http, "GET", "/api/activations?limit=500")).json():
                self.results.update({k: n for k, n in summary["counts"].items() if n})


def verdict(samples: list[Sample], warmup_s: float, max_growth: float, peak_tasks: float
            ) -> tuple[bool, list[str]]:
    """Flat or not, with the figures that say so.

    Tasks and descriptors are judged by each half's floor, its lowest sample: what the gateway
    holds between bursts, which a leak raises. Not by the peaks the samples happen to catch
    during an activation (one 30-minute run caught 3,521 tasks in its second half and 433 in
    its first), nor by each half's median: the suite's short run has five samples a half and
    an activation's tasks live for three of them, so one clean-clone run read a median of 174
    tasks against 25 ("GROWING") with a floor of 46 against 25. The peak is only held to
    `peak_tasks`, what the largest activation can hold.
    """
    settled = [s for s in samples if s.t_s >= warmup_s]
    if len(settled) < 6:
        return False, [f"only {len(settled)} samples after the warm-up: run longer"]
    first, last = settled[:3], settled[-3:]
    rss0 = sum(s.rss_bytes for s in first) / 3
    rss1 = sum(s.rss_bytes for s in last) / 3
    growth = rss1 / rss0 - 1
    half = len(settled) // 2
    lines = [f"RSS after warm-up {rss0 / MiB:.1f} MiB, at the end {rss1 / MiB:.1f} MiB: "
             f"{100 * growth:+.2f} % (limit {100 * max_growth:.0f} %)"]
    ok = growth <= max_growth
    # Still rising at the end, or levelled off? (Caches bounded by design fill for a while:
    # finished activations' results, cleared alerts; a slope near zero says they are full.)
    tail = settled[-max(3, len(settled) // 3):]
    slope = statistics.linear_regression([s.t_s / 60 for s in tail],
                                         [s.rss_bytes / MiB for s in tail]).slope
    lines.append(f"RSS slope over the last {(tail[-1].t_s - tail[0].t_s) / 60:.0f} min: "
                 f"{slope:+.3f} MiB/min")
    for name, margin in (("tasks", 64.0), ("fds", 32.0)):
        early = min(float(getattr(s, name)) for s in settled[:half])
        late = min(float(getattr(s, name)) for s in settled[half:])
        peak = max(float(getattr(s, name)) for s in settled)
        bounded = late <= early + margin and (name != "tasks" or peak <= peak_tasks)
        ok = ok and bounded
        lines.append(f"{name}: floor {early:.0f} in the first half, {late:.0f} in the second "
                     f"(margin {margin:.0f}), peak {peak:.0f}"
                     + (f" (limit {peak_tasks:.0f})" if name == "tasks" else "")
                     + f": {'bounded' if bounded else 'GROWING'}")
    return ok, lines


def plot(samples: list[Sample], warmup_s: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t_s / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    series: list[tuple[str, list[float]]] = [("RSS (MiB)", [s.rss_bytes / MiB for s in samples]),
              ("asyncio tasks", [s.tasks for s in samples]),
              ("open descriptors", [float(s.fds) for s in samples]),
              ("SQLite (MiB)", [s.sqlite_bytes / MiB for s in samples])]
    for axis, (label, values) in zip(axes, series, strict=True):
        axis.plot(minutes, values, marker=".", linewidth=1)
        axis.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=0.8)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if label == "RSS (MiB)":
            axis.set_ylim(bottom=0, top=max(values) * 1.15)
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true",
                        help="the suite's run: 120 sirens for 75 s, the first 30 s a warm-up")
    parser.add_argument("--sirens", type=int, default=2000)
    parser.add_argument("--mqtt", type=int, default=None, help="of which MQTT (default 1/4)")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds, after all online")
    parser.add_argument("--warmup", type=float, default=300.0,
                        help="seconds of the duration before RSS is taken as the reference")
    parser.add_argument("--interval", type=float, default=5.0, help="poll/report interval, s")
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--activation-every", type=float, default=60.0)
    parser.add_argument("--fault-every", type=float, default=3.0,
                        help="mean seconds between injected faults (per simulator process)")
    parser.add_argument("--schedule-cron", default="*/10 * * * *")
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--sim-processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--out", type=Path, default=REPO / "test-artifacts" / "soak",
                        help="folder for the PNG plot and the JSON samples")
    args = parser.parse_args(argv)
    if args.short:
        args.sirens, args.duration, args.warmup = 120, 75.0, 30.0
        args.interval, args.sample_every, args.activation_every = 2.0, 5.0, 10.0
        args.fault_every, args.schedule_cron = 1.0, "* * * * *"
    if args.mqtt is None:
        args.mqtt = args.sirens // 4
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"soak-{args.sirens}-{int(args.duration)}s"
    print(f"soak: {args.sirens} sirens ({args.mqtt} MQTT), {args.duration:.0f} s "
          f"(warm-up {args.warmup:.0f} s), an activation every {args.activation_every:.0f} s, "
          f"a fault every ~{args.fault_every:.1f} s per simulator process, schedule "
          f"'{args.schedule_cron}'", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        soak = Soak(args, Path(tmp))
        try:
            soak.start()
            asyncio.run(soak.run())
        finally:
            soak.close()
            log = Path(tmp) / "gateway.log"
            if log.exists():
                (args.out / f"{name}-gateway.log").write_bytes(log.read_bytes()[-2_000_000:])
    # The largest activation (all sirens, the scheduled silent test) holds a task or two per
    # siren (its sender, a confirmation poll's worker): measured 1.7 at 2,000 sirens.
    ok, lines = verdict(soak.samples, args.warmup, args.max_rss_growth,
                        peak_tasks=3 * len(soak.sirens) + 256)
    png = args.out / f"{name}.png"
    plot(soak.samples, args.warmup, f"Soak: {args.sirens} sirens, {args.duration / 60:.0f} min "
         f"({'pass' if ok else 'FAIL'})", png)
    (args.out / f"{name}.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "events": dict(soak.events),
         "results": dict(soak.results), "samples": [asdict(s) for s in soak.samples]},
        indent=1), encoding="utf-8")
    for line in lines:
        print(f"  {line}")
    print(f"  events: {dict(sorted(soak.events.items()))}")
    print(f"  activation results per siren: {dict(sorted(soak.results.items()))}")
    settled = [s for s in soak.samples if s.t_s >= args.warmup]
    if len(settled) >= 2:
        rss0, rss1 = settled[0].rss_bytes, settled[-1].rss_bytes
        hours = (settled[-1].t_s - settled[0].t_s) / 3600
        print(f"RATIO soak RSS growth after warm-up: "
              f"{sum(s.rss_bytes for s in settled[-3:]) / sum(s.rss_bytes for s in settled[:3]):.4f}"
              f"  (target <= {1 + args.max_rss_growth:.2f}; first {rss0 / MiB:.1f} MiB, last "
              f"{rss1 / MiB:.1f} MiB)")
        sqlite_rate = (settled[-1].sqlite_bytes - settled[0].sqlite_bytes) / MiB / max(hours, 1e-9)
        print(f"RATIO soak SQLite growth MiB per hour: {sqlite_rate:.1f}")
    print(f"plot: {png}")
    print("PASS" if ok else "FAIL")
    print(json.dumps({"pass": ok, "samples": len(soak.samples), "settled": len(settled),
                      "png": str(png), "events": dict(soak.events),
                      "results": dict(soak.results), "verdict": lines}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

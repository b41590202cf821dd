"""Cluster failover and scale-out, on a real PostgreSQL server and simulated sirens.

    python -m bench.failover                       # 5 trials, 300 sirens, 3 nodes
    python -m bench.failover --scale --sirens 3000 # also CPU per poll: 3 nodes vs 1

Failover: 3 node processes share the sirens; one node (each trial the next one, the leader
among them) is killed with SIGKILL; the time from the kill until every one of its sirens has
answered a poll again (the simulators count each siren's requests) is measured, with the time
the survivors claimed them, then the node is started again and the cluster settles. Also the
mirrored view's lag on the survivors (how old the newest answer of a siren owned elsewhere was
when applied).

Scale: the same fleet polled by one node alone, then by three: CPU seconds of the node
processes per 1,000 polls, and the polls per second each setup sustained.

Needs PostgreSQL (SIREN_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres);
the bench makes its own database and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from simulators.launcher import FleetProcess, start_fleet
from simulators.processes import GatewayProcess
from simulators.sitegen import assign_free_ports, generate_site, write_site
from siren_gateway.security.auth import hash_password

SERVER = os.environ.get("SIREN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "bench-cluster-secret-0123456789"
PASSWORD = "bench-password-0123"


def site_for(url: str, sirens: int, poll_s: float, lease_s: float, heartbeat_s: float
             ) -> dict[str, Any]:
    site = generate_site(sirens, poll_interval_s=poll_s, timeout_s=1.0)
    site["database"] = {"url": url}
    site["cluster"] = {"lease_s": lease_s, "heartbeat_s": heartbeat_s, "fence_margin_s": 1.0,
                       "live_interval_s": 0.5, "secret": SECRET}
    site["storage"] = {"telemetry_min_interval_s": 300}
    site["users"] = [{"username": "bench", "role": "viewer",
                      "password_hash": hash_password(PASSWORD)}]
    return site


class Bench:
    def __init__(self, work: Path, url: str, site: dict[str, Any]) -> None:
        assign_free_ports(site)
        self.site_file = write_site(site, work / "site.yaml")
        self.url = url
        self.work = work
        self.sirens = [s["id"] for s in site["sirens"]]
        self.fleet: FleetProcess | None = None
        self.nodes: dict[str, GatewayProcess] = {}

    def start_fleet(self) -> None:
        self.fleet = start_fleet(self.site_file, control_port=0, timeout_s=600)

    def start_node(self, name: str) -> None:
        node = self.nodes.get(name) or GatewayProcess(self.site_file, self.work / f"{name}.log",
                                                      node_id=name)
        self.nodes[name] = node
        node.start()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return [tuple(r) for r in conn.execute(sql.encode(), params or None).fetchall()]

    def owners(self) -> dict[str, str | None]:
        try:
            rows = self.query("SELECT siren_id, node_id FROM siren_leases "
                              "WHERE expires_at > extract(epoch FROM now())")
        except psycopg.errors.UndefinedTable:  # no node has made the schema yet
            return {}
        return {siren: node for siren, node in rows}  # noqa: C416 (rows are tuples)

    def leader(self) -> str | None:
        rows = self.query("SELECT node_id FROM cluster_leader WHERE expires_at > "
                          "extract(epoch FROM now())")
        return rows[0][0] if rows else None

    async def requests(self, control: httpx.AsyncClient) -> dict[str, int]:
        counts: dict[str, int] = (await control.get("/stats")).json()["requests"]
        return counts

    async def settle(self, names: list[str], timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            owners = self.owners()
            if len(owners) == len(self.sirens) and set(owners.values()) == set(names):
                return
            await asyncio.sleep(0.5)
        raise SystemExit(f"the cluster did not settle on {names}")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.fleet is not None:
            self.fleet.stop()


async def failover(bench: Bench, trials: int) -> list[dict[str, float]]:
    assert bench.fleet is not None
    names = ["a", "b", "c"]
    for name in names:
        bench.start_node(name)
    await bench.settle(names)
    results = []
    async with httpx.AsyncClient(base_url=bench.fleet.control_url, timeout=30) as control:
        for trial in range(trials):
            victim = names[trial % len(names)]
            await asyncio.sleep(3.0)  # steady state
            was_leader = bench.leader() == victim
            lost = [s for s, n in bench.owners().items() if n == victim]
            before = await bench.requests(control)
            killed = time.time()
            bench.nodes[victim].kill()
            waiting = set(lost)
            while waiting:
                await asyncio.sleep(0.05)
                counts = await bench.requests(control)
                waiting = {s for s in waiting if counts.get(s, 0) <= before.get(s, 0)}
                if time.time() - killed > 120:
                    raise SystemExit(f"trial {trial}: {len(waiting)} sirens never polled again")
            polled = time.time() - killed
            claims = bench.query("SELECT max(since) FROM siren_leases WHERE siren_id = ANY(%s)",
                                 lost)
            claimed = float(claims[0][0]) - killed
            results.append({"victim_was_leader": float(was_leader), "sirens": len(lost),
                            "claimed_s": claimed, "polled_s": polled})
            print(f"trial {trial + 1}: killed {victim}{' (leader)' if was_leader else ''}, "
                  f"{len(lost)} sirens: claimed by {claimed:.2f} s, all polled again by "
                  f"{polled:.2f} s", flush=True)
            bench.start_node(victim)
            await bench.settle(names)
    return results


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def scale(bench: Bench, names: list[str], warmup_s: float, duration_s: float
                ) -> dict[str, float]:
    assert bench.fleet is not None
    for name in names:
        bench.start_node(name)
    await bench.settle(names)
    await asyncio.sleep(warmup_s)
    pids = [process.pid for n in names if (process := bench.nodes[n].process) is not None]
    async with httpx.AsyncClient(base_url=bench.fleet.control_url, timeout=30) as control:
        polls0, cpu0, wall0 = sum((await bench.requests(control)).values()), cpu_of(pids), \
            time.monotonic()
        await asyncio.sleep(duration_s)
        polls1, cpu1, wall1 = sum((await bench.requests(control)).values()), cpu_of(pids), \
            time.monotonic()
    for name in names:
        bench.nodes[name].stop()
    polls = polls1 - polls0
    return {"nodes": len(names), "polls": polls, "polls_per_s": polls / (wall1 - wall0),
            "cpu_s": cpu1 - cpu0, "cpu_ms_per_poll": 1000 * (cpu1 - cpu0) / max(polls, 1)}


async def mirror_lag(bench: Bench) -> dict[str, Any]:
    """The leader's mirror of the sirens it does not own: how old a siren's newest answer was
    when it arrived there (last and worst since the leader started)."""
    for node in bench.nodes.values():
        try:
            async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
                token = (await http.post("/api/auth/token", data={
                    "username": "bench", "password": PASSWORD})).json()["access_token"]
                info = (await http.get("/api/cluster", headers={
                    "Authorization": f"Bearer {token}"})).json()
                live: dict[str, Any] = info["live"]
                return live
        except (httpx.HTTPError, KeyError, ValueError):
            continue
    return {}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sirens", type=int, default=300)
    parser.add_argument("--poll", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=5, help="0: no failover trials")
    parser.add_argument("--scale", action="store_true", help="also CPU per poll, 3 nodes vs 1")
    parser.add_argument("--scale-poll", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()

    name = f"siren_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    url = SERVER.rpartition("/")[0] + f"/{name}"
    try:
        if args.trials > 0:
            with tempfile.TemporaryDirectory() as tmp:
                bench = Bench(Path(tmp), url, site_for(url, args.sirens, args.poll, args.lease,
                                                       args.heartbeat))
                bench.start_fleet()
                try:
                    results = await failover(bench, args.trials)
                    lag = await mirror_lag(bench)
                finally:
                    bench.stop()
                polled = [r["polled_s"] for r in results]
                claimed = [r["claimed_s"] for r in results]
                print(f"failover ({args.sirens} sirens, 3 nodes, lease {args.lease} s, heartbeat "
                      f"{args.heartbeat} s, poll interval {args.poll} s, {args.trials} trials):")
                print(f"RATIO failover all sirens polled again, p50 s: {statistics.median(polled):.2f}"
                      f"  max s: {max(polled):.2f}  (lease + one poll interval: "
                      f"{args.lease + args.poll:.1f})")
                print(f"RATIO failover claimed by the survivors, p50 s: "
                      f"{statistics.median(claimed):.2f}  max s: {max(claimed):.2f}")
                print(f"RATIO mirrored view on the leader, age of a siren's newest answer when "
                      f"applied: last {lag.get('last_lag_s')} s, worst {lag.get('max_lag_s')} s "
                      f"(poll interval {args.poll} s + live interval 0.5 s)")
        if args.scale:
            for nodes in (["solo"], ["a", "b", "c"]):
                with psycopg.connect(url, autocommit=True) as conn:  # a fresh start
                    conn.execute(b"DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                with tempfile.TemporaryDirectory() as tmp:
                    bench = Bench(Path(tmp), url, site_for(url, args.sirens, args.scale_poll,
                                                           args.lease, args.heartbeat))
                    bench.start_fleet()
                    try:
                        figures = await scale(bench, nodes, 20.0, args.duration)
                    finally:
                        bench.stop()
                print(f"scale, {len(nodes)} node(s), {args.sirens} sirens every "
                      f"{args.scale_poll} s: {figures['polls_per_s']:.0f} polls/s, "
                      f"{figures['cpu_ms_per_poll']:.3f} ms CPU per poll (all nodes)")
                if len(nodes) == 1:
                    solo = figures
            print(f"RATIO scale 3 nodes / 1 node CPU per poll: "
                  f"{figures['cpu_ms_per_poll'] / solo['cpu_ms_per_poll']:.2f}  "
                  f"(polls/s {figures['polls_per_s']:.0f} vs {solo['polls_per_s']:.0f})")
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    asyncio.run(main())

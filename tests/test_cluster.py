"""Several gateway nodes on one PostgreSQL database, as separate processes over real sockets
against 300 simulated sirens: every siren owned by exactly one live node, a killed node's sirens
taken over within the lease, one picture from any node."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Page, expect

from simulators.launcher import FleetProcess, start_fleet
from simulators.processes import GatewayProcess
from simulators.sitegen import assign_free_ports, generate_site, write_site
from siren_gateway.cluster.remote import TOKEN_HEADER
from tests.browser import ARTIFACTS, needs_chromium
from tests.conftest import PASSWORDS, Mosquitto, logged_in, wait_until, with_users
from tests.databases import needs_postgres
from tests.test_schedule_e2e import plan_at

pytestmark = needs_postgres

SIRENS = 300
POLL_S = 1.0
LEASE_S = 4.0
HEARTBEAT_S = 0.5
SECRET = "test-cluster-secret-0123456789"


def cluster_site(database_url: str, sirens: int = SIRENS) -> dict[str, Any]:
    # Delivery may wait for a dead owner's sirens to be taken over: allow the lease and more.
    site = with_users(generate_site(sirens, poll_interval_s=POLL_S, timeout_s=0.5),
                      confirm_timeout_s=20.0, sync_lead_s=2.0, confirm_poll_interval_s=0.5,
                      delivery_grace_s=15.0, duplicate_window_s=0)
    site["database"] = {"url": database_url}
    site["cluster"] = {"lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S, "fence_margin_s": 1.0,
                       "live_interval_s": 0.25}
    site["storage"] = {"telemetry_min_interval_s": 60}
    site["cluster"]["secret"] = SECRET
    return site


@dataclass
class Cluster:
    site_file: Path
    fleet: FleetProcess
    nodes: dict[str, GatewayProcess]
    clients: dict[str, httpx.AsyncClient]
    database_url: str

    def owners(self) -> dict[str, str | None]:
        with psycopg.connect(self.database_url) as conn:
            return dict(conn.execute("SELECT siren_id, node_id FROM siren_leases").fetchall())

    def claimed_at(self) -> dict[str, float]:
        """When each siren's present owner claimed it (the database's clock: this machine's)."""
        with psycopg.connect(self.database_url) as conn:
            return dict(conn.execute("SELECT siren_id, since FROM siren_leases").fetchall())

    async def view(self, node: str) -> dict[str, dict[str, Any]]:
        response = await self.clients[node].get("/api/sirens")
        response.raise_for_status()
        return {s["id"]: s for s in response.json()}

    async def fleet_truth(self, siren: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.fleet.control_url, timeout=10) as control:
            result: dict[str, Any] = (await control.get(f"/sirens/{siren}")).json()
            return result

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def cluster(self, node: str) -> dict[str, Any]:
        response = await self.clients[node].get("/api/cluster")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def _seen_after(view: dict[str, dict[str, Any]], sirens: Iterator[str] | set[str],
                moment: float) -> bool:
    for siren in sirens:
        seen = view[siren]["last_seen"]
        if seen is None or datetime.fromisoformat(seen).timestamp() <= moment:
            return False
    return True


async def test_a_killed_nodes_sirens_are_taken_over_within_the_lease(cluster: Cluster) -> None:
    async def settled() -> bool:
        owners = cluster.owners()
        if None in owners.values() or sorted({str(o) for o in owners.values()}) != ["a", "b", "c"]:
            return False
        for name in cluster.nodes:
            view = await cluster.view(name)
            if sum(s["online"] for s in view.values()) != SIRENS:
                return False
        return True

    await wait_until(settled, 60, "3 nodes sharing 300 sirens, all online on every node", 0.5)
    info = await cluster.cluster("a")
    assert info["mode"] == "cluster" and info["leader_id"] in ("a", "b", "c")
    assert sorted(n["id"] for n in info["nodes"] if n["alive"]) == ["a", "b", "c"]
    assert sum(n["sirens_owned"] for n in info["nodes"]) == SIRENS
    # The delivery endpoint sounds sirens: only a node with the cluster secret may call it.
    siren = next(s for s, node in cluster.owners().items() if node == "a")
    deliver = f"{cluster.nodes['a'].url}/api/cluster/deliver/{siren}"
    command = {"kind": "sound", "signal": "growl_test", "sequence": 1, "command_id": "x"}
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.post(deliver, json=command)).status_code == 403
        assert (await http.post(deliver, json=command, headers={
            TOKEN_HEADER: "not-the-secret-0123456789"})).status_code == 403
        assert (await http.post(deliver, json={"kind": "explode"}, headers={
            TOKEN_HEADER: SECRET})).status_code == 400
    assert (await cluster.fleet_truth(siren))["commands_received"] == 0
    # A read-back is asked of the owner, which answers with a poll started after the request
    # (never a mirrored one that may predate a command); only nodes with the secret may ask,
    # and a node that does not own the siren says so.
    read = f"{cluster.nodes['a'].url}/api/cluster/read/{siren}"
    other = next(name for name in cluster.nodes if name != "a")
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.post(read, json={})).status_code == 403
        asked_at = time.time()
        answer = await http.post(read, json={}, headers={TOKEN_HEADER: SECRET})
        assert answer.status_code == 200, answer.text
        sample = answer.json()["sample"]
        assert sample["at"] >= asked_at and "last_command_sequence" in sample["values"]
        refused = await http.post(f"{cluster.nodes[other].url}/api/cluster/read/{siren}",
                                  json={}, headers={TOKEN_HEADER: SECRET})
        assert refused.status_code == 409 and refused.json()["reason"] == "not_owner"
    owners = cluster.owners()
    lost = {siren for siren, node in owners.items() if node == "b"}
    assert 40 < len(lost) < 160, "rendezvous hashing spreads the sirens"

    killed_at = time.time()
    cluster.nodes["b"].kill()
    survivors = ("a", "c")

    async def taken_over() -> bool:
        owners = cluster.owners()
        if any(owners[siren] not in survivors for siren in lost):
            return False
        views = [await cluster.view(name) for name in survivors]
        return all(_seen_after(view, lost, killed_at) and
                   sum(s["online"] for s in view.values()) == SIRENS for view in views)

    await wait_until(taken_over, 30, "the survivors poll every siren of the killed node", 0.25)
    shown_s = time.time() - killed_at
    claimed = cluster.claimed_at()
    claimed_s = max(claimed[siren] for siren in lost) - killed_at
    print(f"takeover of {len(lost)} sirens after the kill: claimed by the survivors at "
          f"{claimed_s:.2f} s, polled again and shown by both by {shown_s:.2f} s "
          f"(lease {LEASE_S} s, heartbeat {HEARTBEAT_S} s, poll interval {POLL_S} s)")
    # A gaining node polls at once (Poller.poll_soon): claimed within the lease and a
    # heartbeat means polled within the lease and one poll interval.
    assert claimed_s <= LEASE_S + HEARTBEAT_S + 0.5, claimed_s
    async def listed() -> bool:  # (each node counts its own at its next heartbeat)
        info = await cluster.cluster("c")
        alive = {n["id"]: n for n in info["nodes"] if n["alive"]}
        return (sorted(alive) == ["a", "c"] and info["leader_id"] in ("a", "c")
                and sum(n["sirens_owned"] for n in alive.values()) == SIRENS)

    await wait_until(listed, 10, "/api/cluster lists the two survivors owning every siren")


async def _settled(cluster: Cluster, sirens: int) -> str:
    """Wait until every siren is owned and online in the leader's view; the leader's id."""
    leader: str | None = None

    async def ready() -> bool:
        nonlocal leader
        owners = cluster.owners()
        if None in owners.values() or len(set(owners.values())) != len(cluster.nodes):
            return False
        info = await cluster.cluster(next(iter(cluster.clients)))
        leader = info["leader_id"]
        view = await cluster.view(next(iter(cluster.clients)))
        return leader is not None and sum(s["online"] for s in view.values()) == sirens

    await wait_until(ready, 60, "every siren owned and online", 0.5)
    assert leader is not None
    return leader


async def _onsets(cluster: Cluster, sirens: int) -> dict[str, list[str]]:
    async with httpx.AsyncClient(base_url=cluster.fleet.control_url, timeout=10) as control:
        out = {}
        for n in range(1, sirens + 1):
            siren = f"s{n:05d}"
            truth = (await control.get(f"/sirens/{siren}")).json()
            out[siren] = [o["signal"] for o in truth["onsets"]]
        return out


StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_cluster(tmp_path: Path, postgres_url: str) -> AsyncIterator[StartCluster]:
    """Start simulators and nodes a, b, c for a site dict (`urls`: a node's own database URL),
    with a logged-in client for each; all stopped at the end, their logs' tails printed."""
    started: list[tuple[FleetProcess, dict[str, GatewayProcess]]] = []
    clusters: list[Cluster] = []

    async def start(site: dict[str, Any], user: str = "viewer",
                    urls: dict[str, str] | None = None) -> Cluster:
        assign_free_ports(site)
        site_file = write_site(site, tmp_path / "site.yaml")
        fleet = start_fleet(site_file, control_port=0)
        nodes = {name: GatewayProcess(site_file, tmp_path / f"{name}.log", node_id=name,
                                      database_url=(urls or {}).get(name))
                 for name in ("a", "b", "c")}
        started.append((fleet, nodes))
        for node in nodes.values():
            node.start()
        clients = {name: await logged_in(node, user) for name, node in nodes.items()}
        clusters.append(Cluster(site_file, fleet, nodes, clients, postgres_url))
        return clusters[-1]

    yield start
    for cluster in clusters:
        await cluster.close()
    for fleet, nodes in started:
        for node in nodes.values():
            node.stop()
        fleet.stop()
    for name in ("a", "b", "c"):
        log = tmp_path / f"{name}.log"
        if log.exists():
            print(f"--- node {name} log (tail) ---\n{log.read_text()[-4000:]}")


@pytest.fixture
async def cluster(start_cluster: StartCluster, postgres_url: str) -> Cluster:
    return await start_cluster(cluster_site(postgres_url))


async def test_the_leader_killed_a_second_before_a_step_it_sounds_once_everywhere(
        start_cluster: StartCluster, postgres_url: str) -> None:
    sirens = 30
    start = math.ceil(time.time()) + 16
    cluster = await start_cluster(cluster_site(postgres_url, sirens) | {
        "schedules": [plan_at(start, [0], grace_s=60.0)]}, "operator")
    try:
        leader = await _settled(cluster, sirens)
        await asyncio.sleep(max(0.0, start - 1.0 - time.time()))
        cluster.nodes[leader].kill()
        survivors = tuple(name for name in cluster.nodes if name != leader)
        # No new login: the session made on the dead leader is in the database.
        http = cluster.clients[survivors[0]]

        async def done() -> bool:
            response = await http.get("/api/schedules/e2e/occurrences")
            rows = response.json() if response.status_code == 200 else []
            return bool(rows) and rows[0]["state"] == "done"

        await wait_until(done, 90, "the occurrence done under the new leader", 0.5)
        assert (await cluster.clients[survivors[1]].get("/api/sirens")).status_code == 200
        occurrence = (await http.get("/api/schedules/e2e/occurrences")).json()[0]
        report = (await http.get(f"/api/reports/{occurrence['id']}")).json()
        new_leader = (await cluster.cluster(survivors[0]))["leader_id"]
    finally:
        await cluster.close()
    onsets = await _onsets(cluster, sirens)
    twice = {s: o for s, o in onsets.items() if o != ["growl_test"]}
    assert not twice, f"each siren must sound exactly once: {twice}"
    assert new_leader in survivors
    assert report["commanded"] == sirens, report
    assert sum(report["counts"].values()) == sirens, report  # every siren has its verdict
    assert report["counts"]["sounded"] == sirens, report


async def test_an_owner_killed_mid_activation_every_target_sounds_once(
        start_cluster: StartCluster, postgres_url: str) -> None:
    sirens = 30
    cluster = await start_cluster(cluster_site(postgres_url, sirens), "operator")
    try:
        leader = await _settled(cluster, sirens)
        owners = cluster.owners()
        victim = next(name for name in cluster.nodes if name != leader)
        victims = sorted(s for s, node in owners.items() if node == victim)
        assert victims, "the killed node owns some sirens"
        entry = next(name for name in cluster.nodes if name not in (leader, victim))
        http = cluster.clients[entry]  # a follower: the request goes on to the leader
        response = await http.post("/api/activations", json={
            "targets": {"all": True}, "class": "test", "signal": "growl_test"})
        assert response.status_code == 201, response.text
        activation_id = response.json()["id"]
        cluster.nodes[victim].kill()  # while the leader delivers through the owners
        report: dict[str, Any] = {}

        async def finished() -> bool:
            nonlocal report
            answer = await http.get(f"/api/activations/{activation_id}")
            report = answer.json()
            return bool(report["state"] != "running")

        await wait_until(finished, 90, "the activation finished", 0.5)
    finally:
        await cluster.close()
    onsets = await _onsets(cluster, sirens)
    wrong = {s: o for s, o in onsets.items() if o != ["growl_test"]}
    assert not wrong, f"each siren must sound exactly once: {wrong}"
    statuses = {r["siren_id"]: r["status"] for r in report["sirens"]}
    assert statuses == dict.fromkeys(statuses, "sounded") and len(statuses) == sirens, report


def _log_time(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def test_the_leader_cut_off_from_the_database_stops_before_others_take_over(
        tmp_path: Path, postgres_url: str, start_cluster: StartCluster) -> None:
    """Each node logs in to PostgreSQL as a role of its own; the test takes the leader's right
    to connect away and ends its sessions, as a partition would. It must stop polling and
    commanding (its fence) before the survivors' leases begin, give up the leadership and end
    (crash-only); an activation made meanwhile sounds every siren once; afterwards each siren
    is polled by one node only (the simulators count the requests)."""
    tag = uuid.uuid4().hex[:8]
    roles = {n: f"siren_node_{tag}_{n}" for n in "abc"}
    admin = psycopg.connect(postgres_url, autocommit=True)
    base, _, name = postgres_url.rpartition("/")
    scheme, _, host = base.partition("//")
    urls = {n: f"{scheme}//{role}@{host.partition('@')[2]}/{name}" for n, role in roles.items()}
    for role in roles.values():
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER".encode())
    victim = "?"
    try:
        cluster = await start_cluster(cluster_site(postgres_url, 60), "operator", urls=urls)
        victim = await _settled(cluster, 60)
        survivor = next(n for n in "abc" if n != victim)
        mine = sorted(s for s, node in cluster.owners().items() if node == victim)
        control = httpx.AsyncClient(base_url=cluster.fleet.control_url, timeout=10)

        async def requests() -> int:
            counts = (await control.get("/stats")).json()["requests"]
            return sum(counts.get(s, 0) for s in mine)

        cut_at = time.time()
        _cut_off(admin, roles[victim])
        # Every siren commanded while the leader is cut off: the request waits for the next.
        activation_id = None

        async def accepted() -> bool:
            nonlocal activation_id
            answer = await cluster.clients[survivor].post("/api/activations", json={
                "targets": {"all": True}, "class": "test", "signal": "growl_test"})
            activation_id = answer.json()["id"] if answer.status_code == 201 else None
            return activation_id is not None

        await wait_until(accepted, 30, "an activation accepted during the cut", 0.5)
        await wait_until(lambda: all(o != victim for s, o in cluster.owners().items()
                                     if s in mine), 30, "the victim's sirens taken over", 0.25)
        claimed = min(cluster.claimed_at()[s] for s in mine)
        victim_process = cluster.nodes[victim].process
        assert victim_process is not None
        await wait_until(lambda: victim_process.poll() is not None, 30,
                         "the demoted leader ended (its supervisor would start it again)")
        # One node polls each siren now: over 4 poll intervals, about 4 requests each.
        await asyncio.sleep(1.0)
        before = await requests()
        await asyncio.sleep(4 * POLL_S)
        per_siren = (await requests() - before) / len(mine) / 4

        async def finished() -> bool:
            answer = await cluster.clients[survivor].get(f"/api/activations/{activation_id}")
            return answer.status_code == 200 and answer.json()["state"] != "running"

        await wait_until(finished, 60, "the activation finished", 0.5)
        truths = {s: (await control.get(f"/sirens/{s}")).json() for s in cluster.owners()}
        await control.aclose()
    finally:
        for role in roles.values():
            _cut_off(admin, role)
            admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER".encode())
            admin.execute(f"DROP ROLE IF EXISTS {role}".encode())
        admin.close()
    log = (tmp_path / f"{victim}.log").read_text().splitlines()
    fence_lines = [line for line in log if "fenced (lease not renewed)" in line]
    assert fence_lines, "the leader fenced itself"
    assert any("lost the leadership" in line for line in log)
    fenced_at = _log_time(fence_lines[0])
    print(f"cut at 0; the leader fenced at {fenced_at - cut_at:.2f} s; first claim by a "
          f"survivor at {claimed - cut_at:.2f} s; requests per siren and poll interval after: "
          f"{per_siren:.2f}")
    assert fenced_at < claimed, "it stopped before any other node could claim its sirens"
    # The simulators' own count: each siren got one command and sounded once.
    assert all(t["commands_received"] == 1 for t in truths.values()), {
        s: t["commands_received"] for s, t in truths.items() if t["commands_received"] != 1}
    assert all([o["signal"] for o in t["onsets"]] == ["growl_test"] for t in truths.values())
    assert per_siren < 1.5, "one node polls each siren, not two"


def _cut_off(admin: psycopg.Connection[Any], role: str) -> None:
    """As a partition would: the role may not connect, and its sessions end."""
    admin.execute(f"ALTER ROLE {role} NOLOGIN".encode())
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                  (role,))


async def test_mqtt_messages_are_handled_once_by_their_owner_and_survive_a_node(
        postgres_url: str, broker: Mosquitto, start_cluster: StartCluster) -> None:
    site = cluster_site(postgres_url, 30)
    mqtt = generate_site(30, poll_interval_s=POLL_S, timeout_s=0.5, mqtt_sirens=20,
                         telemetry_interval_s=0.5,
                         mqtt_broker={"host": "127.0.0.1", "port": broker.port,
                                      "client_id": "siren-gw", "reconnect_max_s": 1.0})
    site["sirens"], site["mqtt"] = mqtt["sirens"], mqtt["mqtt"]
    secret = {TOKEN_HEADER: site["cluster"]["secret"]}
    mqtt_sirens = {s["id"] for s in site["sirens"] if s["link"]["type"] == "mqtt"}
    cluster = await start_cluster(site)
    nodes = cluster.nodes
    try:
        await _settled(cluster, 30)

        async def counts() -> dict[str, tuple[int, int]]:
            out = {}
            for name, client in cluster.clients.items():
                health = (await client.get("/api/health", headers=secret)).json()["mqtt"]
                out[name] = (health["telemetry"], health["not_owned"])
            return out

        first = await counts()
        await asyncio.sleep(5.0)
        second = await counts()
        handled = sum(second[n][0] - first[n][0] for n in nodes)
        seen = sum(second[n][0] + second[n][1] - first[n][0] - first[n][1] for n in nodes) / 3
        print(f"5 s of MQTT: {handled} reports handled by the 3 nodes, each node heard {seen:.0f}")
        assert handled > 100 and abs(handled - seen) <= 0.05 * seen, (handled, seen)

        leader = (await cluster.cluster("a"))["leader_id"]
        victim = next(n for n in nodes if n != leader)
        lost = {s for s, o in cluster.owners().items() if o == victim} & mqtt_sirens
        killed_at = time.time()
        nodes[victim].kill()

        async def reported_again() -> bool:
            view = await cluster.view(leader)
            return _seen_after(view, lost, killed_at + LEASE_S + HEARTBEAT_S)

        await wait_until(reported_again, 30, "the killed node's MQTT sirens heard again", 0.25)
        resumed_s = time.time() - killed_at
    finally:
        await cluster.close()
    assert lost, "the killed node owned MQTT sirens"
    print(f"the killed node's {len(lost)} MQTT sirens heard again on the leader {resumed_s:.2f} s "
          f"after the kill (lease {LEASE_S} s, reports every 0.5 s)")
    # Reports are lost for no longer than the lease (+ a heartbeat, a report interval, and the
    # mirror's delay to the leader's view).
    assert resumed_s <= LEASE_S + HEARTBEAT_S + 0.5 + 2.0, resumed_s


@needs_chromium
async def test_a_followers_dashboard_shows_every_siren_and_the_nodes(
        start_cluster: StartCluster, postgres_url: str, page: Page) -> None:
    """Chromium on a follower: the login goes on to the leader, the session is good on the
    follower too (its stream connects), every siren is listed, and the node list shows the
    three nodes with one leader."""
    cluster = await start_cluster(cluster_site(postgres_url, 30))
    leader = await _settled(cluster, 30)
    follower = next(name for name in cluster.nodes if name != leader)
    await page.goto(cluster.nodes[follower].url)
    await page.fill("input[name=username]", "operator")
    await page.fill("input[name=password]", PASSWORDS["operator"])
    await page.click("#login-form button")
    await expect(page.locator("#sirens tbody tr")).to_have_count(30)
    await expect(page.locator("#stream")).to_have_class("stream live")
    await expect(page.locator("#cluster-card")).to_be_visible()
    await expect(page.locator("#cluster-nodes tbody tr[data-alive=true]")).to_have_count(3)
    await expect(page.locator("#cluster-nodes tbody tr[data-leader=true]")).to_have_count(1)
    assert await page.locator("#cluster-nodes tbody tr[data-leader=true]").get_attribute(
        "data-node") == leader
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.locator("#cluster-card").screenshot(path=str(ARTIFACTS / "cluster-nodes.png"))

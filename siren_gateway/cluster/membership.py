"""This node's place among gateways sharing one PostgreSQL database: its heartbeat, the sirens
it owns, whether it leads, and the fence that stops it acting on them when it cannot renew.

Every `heartbeat_s` one transaction (on a connection of its own, so a slow telemetry batch
never delays it) records the heartbeat, renews this node's siren leases and the leader lease,
and claims the sirens that rendezvous hashing over the live nodes gives it whose lease is free
or expired. Expiry is judged on the database's clock, so the nodes' clocks do not matter.

Fencing: a lease renewed by a transaction sent at local monotonic time t0 expires in the
database at (its execution) + lease_s, never before t0 + lease_s. This node treats its sirens
and leadership as lost at t0 + lease_s - fence_margin_s unless a later renewal succeeded, on
its own timer, whether or not the database answers: so a node cut off from the database stops
polling and commanding before another can claim its sirens.

Handing a siren over (a node joined): the owner first stops using it (locally, at the end of
one cycle), then releases its lease (in the next), and only then can the new owner claim it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from siren_gateway.config.cluster import ClusterConfig
from siren_gateway.runtime.tasks import cancel_and_wait
from siren_gateway.store.database import Connection
from siren_gateway.store.errors import StorageError
from siren_gateway.store.postgres import PostgresDatabase

log = logging.getLogger(__name__)
LEADER = "leader"


@dataclass(frozen=True)
class NodeIdentity:
    id: str
    address: str  # the node's API, http(s)://host:port
    pid: int = field(default_factory=os.getpid)


def rendezvous_owner(siren_id: str, nodes: Iterable[str]) -> str:
    """The node a siren belongs to among `nodes`: highest random weight, so a node joining or
    leaving moves only the sirens it gains or held."""
    return max(nodes, key=lambda node: hashlib.blake2b(
        f"{node}\x00{siren_id}".encode(), digest_size=8).digest())


@dataclass
class _Cycle:
    """What one heartbeat transaction found."""

    live: list[str]
    held: set[str]  # leases this node holds now (renewed or newly claimed)
    desired: set[str]  # what rendezvous hashing over the live nodes gives this node
    leader: bool
    leader_epoch: int
    leader_id: str | None
    addresses: dict[str, str]  # live nodes' APIs
    owners: dict[str, str] | None  # every siren's owner now (read by the leader only)
    owners_version: tuple[Any, ...]  # what the owners were read at (); () when not leading


OwnershipListener = Callable[[set[str], set[str]], None]  # (gained, lost)
LeadershipListener = Callable[[bool], None]


class Membership:
    def __init__(self, url: str, node: NodeIdentity, siren_ids: list[str],
                 config: ClusterConfig) -> None:
        self.node = node
        self.config = config
        self.siren_ids = list(siren_ids)
        self.database = PostgresDatabase(url, name="cluster")
        self._owned: set[str] = set()
        self._leader = False
        self.leader_epoch = 0
        self._valid_until = 0.0  # loop time: after it, nothing here is owned or led
        self._fence: asyncio.TimerHandle | None = None
        self._to_release: set[str] = set()
        self._desired: set[str] = set()
        self._desired_for: tuple[str, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._ownership_listeners: list[OwnershipListener] = []
        self._leadership_listeners: list[LeadershipListener] = []
        self.live_nodes: list[str] = []
        self.leader_id: str | None = None
        self.addresses: dict[str, str] = {}
        # Each siren's owner as last read (the leader delivers commands through them).
        self.owners: dict[str, str] = {}
        self._owners_version: tuple[Any, ...] = ()
        self.cycles = 0
        self.failed_cycles = 0
        self.fenced = 0  # times the fence fired
        # Why a fence fired: a slow database (a beat still running) or a stalled event loop
        # (the fence timer itself late); both go in its log line.
        self.slowest_beat_s = 0.0
        self._beat_started: float | None = None
        self.started_at = 0.0

    # -- what the rest of the node asks ----------------------------------------------------

    def owns(self, siren_id: str) -> bool:
        return siren_id in self._owned and self._loop_time() < self._valid_until

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self._owned) if self._loop_time() < self._valid_until else frozenset()

    @property
    def leader(self) -> bool:
        return self._leader and self._loop_time() < self._valid_until

    def on_ownership(self, listener: OwnershipListener) -> None:
        self._ownership_listeners.append(listener)

    def on_leadership(self, listener: LeadershipListener) -> None:
        self._leadership_listeners.append(listener)

    @staticmethod
    def _loop_time() -> float:
        # The event loop's clock (asyncio's loop.time() is time.monotonic()), readable from
        # any thread: sync API routes ask from the thread pool.
        return time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.database.start()
        ids = self.siren_ids

        def seed(conn: Connection) -> float:
            with conn.transaction():
                conn.execute("INSERT INTO siren_leases (siren_id) SELECT unnest(?::text[]) "
                             "ON CONFLICT DO NOTHING", (ids,))
                return float(conn.execute(_NOW).fetchone()[0])

        self.started_at = await self.database.run(seed)
        await self._beat()  # the first claim before the node's parts start
        self._task = asyncio.create_task(self._run(), name="cluster heartbeat")
        log.info("cluster node %s (%s): %d live nodes, owns %d of %d sirens%s", self.node.id,
                 self.node.address, len(self.live_nodes), len(self._owned), len(ids),
                 ", leader" if self._leader else "")

    async def stop(self) -> None:
        """Hand everything over at once: the others claim it at their next heartbeat."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        self._drop_all("stopping")
        me = self.node.id

        def leave(conn: Connection) -> None:
            with conn.transaction():
                conn.execute("UPDATE siren_leases SET node_id = NULL, expires_at = 0 "
                             "WHERE node_id = ?", (me,))
                conn.execute("DELETE FROM cluster_leader WHERE node_id = ?", (me,))
                conn.execute("DELETE FROM cluster_nodes WHERE id = ?", (me,))

        try:
            await self.database.run(leave)
        except StorageError as exc:
            log.warning("could not hand the leases over (they expire by themselves): %s", exc)
        await self.database.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._beat()
            await asyncio.sleep(max(0.0, self.config.heartbeat_s - (loop.time() - started)))

    # -- one heartbeat ---------------------------------------------------------------------

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        release, self._to_release = self._to_release, set()
        self._beat_started = sent
        try:
            cycle = await self.database.run(lambda conn: self._transaction(conn, release))
        except StorageError as exc:
            self.failed_cycles += 1
            self._to_release |= release  # still ours in the database: release next time
            if self.failed_cycles == 1 or self.failed_cycles % 30 == 0:
                log.warning("cluster heartbeat failed (%d in all): %s; fenced in %.1f s",
                            self.failed_cycles, exc, max(0.0, self._valid_until - loop.time()))
            return
        finally:
            self._beat_started = None
            self.slowest_beat_s = max(self.slowest_beat_s, loop.time() - sent)
        self.cycles += 1
        self.live_nodes = cycle.live
        self.leader_id, self.addresses = cycle.leader_id, cycle.addresses
        if cycle.owners is not None:
            self.owners = cycle.owners
        self._owners_version = cycle.owners_version
        self._valid_until = sent + self.config.lease_s - self.config.fence_margin_s
        if self._fence is not None:
            self._fence.cancel()
        self._fence = loop.call_at(self._valid_until, self._drop_all, "lease not renewed")
        # Stop using what the live nodes now give to others; release it at the next beat.
        leaving = cycle.held - cycle.desired
        self._to_release |= leaving
        self._set_owned(cycle.held - leaving)
        self.leader_epoch = cycle.leader_epoch
        self._set_leader(cycle.leader)

    def _transaction(self, conn: Connection, release: set[str]) -> _Cycle:
        me, lease = self.node.id, self.config.lease_s
        with conn.transaction():
            now = float(conn.execute(_NOW).fetchone()[0])
            if release:
                conn.execute("UPDATE siren_leases SET node_id = NULL, expires_at = 0 "
                             "WHERE node_id = ? AND siren_id = ANY(?)", (me, sorted(release)))
            held = {r[0] for r in conn.execute(
                "UPDATE siren_leases SET expires_at = ? WHERE node_id = ? RETURNING siren_id",
                (now + lease, me))}
            addresses = {r[0]: r[1] for r in conn.execute(
                "SELECT id, address FROM cluster_nodes WHERE heartbeat_at > ? AND id != ?",
                (now - lease, me))} | {me: self.node.address}
            live = sorted(addresses)
            desired = self._desired_set(live)
            wanted = sorted(desired - held)
            if wanted:
                held |= {r[0] for r in conn.execute(
                    "UPDATE siren_leases SET node_id = ?, expires_at = ?, epoch = epoch + 1, "
                    "since = ? WHERE siren_id = ANY(?) AND (node_id IS NULL OR expires_at < ?) "
                    "RETURNING siren_id", (me, now + lease, now, wanted, now))}
            conn.execute(
                "INSERT INTO cluster_nodes (id, address, pid, started_at, heartbeat_at, owned) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET address = "
                "excluded.address, pid = excluded.pid, heartbeat_at = excluded.heartbeat_at, "
                "owned = excluded.owned",
                (me, self.node.address, self.node.pid, self.started_at or now, now, len(held)))
            row = conn.execute(
                "INSERT INTO cluster_leader (name, node_id, expires_at, epoch) VALUES "
                "(?, ?, ?, 1) ON CONFLICT (name) DO UPDATE SET node_id = excluded.node_id, "
                "expires_at = excluded.expires_at, epoch = cluster_leader.epoch + CASE WHEN "
                "cluster_leader.node_id = excluded.node_id THEN 0 ELSE 1 END "
                "WHERE cluster_leader.node_id = excluded.node_id OR cluster_leader.expires_at < ? "
                "RETURNING epoch", (LEADER, me, now + lease, now)).fetchone()
            leader_id: str | None = me
            owners: dict[str, str] | None = None
            version: tuple[Any, ...] = ()
            if row is None:
                found = conn.execute("SELECT node_id FROM cluster_leader WHERE name = ? AND "
                                     "expires_at > ?", (LEADER, now)).fetchone()
                leader_id = found[0] if found else None
            else:
                # The whole map only when an owner changed (every claim raises an epoch; a
                # released or expired lease leaves its old owner, who answers not_owner).
                version = tuple(conn.execute(
                    "SELECT sum(epoch), count(node_id) FROM siren_leases").fetchone())
                if version != self._owners_version:
                    owners = {r[0]: r[1] for r in conn.execute(
                        "SELECT siren_id, node_id FROM siren_leases WHERE node_id IS NOT NULL")}
        return _Cycle(live, held, desired, row is not None, int(row[0]) if row else 0,
                      leader_id, addresses, owners, version)

    def _desired_set(self, live: list[str]) -> set[str]:
        nodes = tuple(live) if self.node.id in live else (*live, self.node.id)
        if nodes != self._desired_for:  # rehash only when the live nodes change
            me = self.node.id
            self._desired = {s for s in self.siren_ids if rendezvous_owner(s, nodes) == me}
            self._desired_for = nodes
        return self._desired

    # -- changes, told to the listeners ------------------------------------------------------

    def _set_owned(self, owned: set[str]) -> None:
        gained, lost = owned - self._owned, self._owned - owned
        self._owned = owned
        if gained or lost:
            log.info("cluster node %s: +%d -%d sirens, owns %d", self.node.id, len(gained),
                     len(lost), len(owned))
            for listener in self._ownership_listeners:
                listener(gained, lost)

    def _set_leader(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        log.warning("cluster node %s %s the leadership (epoch %d)", self.node.id,
                    "took" if leader else "lost", self.leader_epoch)
        for listener in self._leadership_listeners:
            listener(leader)

    def _drop_all(self, why: str) -> None:
        if self._fence is not None:
            self._fence.cancel()
            self._fence = None
        if self._owned or self._leader:
            if why != "stopping":
                self.fenced += 1
                now = asyncio.get_running_loop().time()
                beat = (f"a heartbeat running for {now - self._beat_started:.2f} s"
                        if self._beat_started is not None else "no heartbeat running")
                log.error("cluster node %s fenced (%s): stops polling and commanding %d sirens "
                          "(%s; the fence's timer %.2f s late)", self.node.id, why,
                          len(self._owned), beat, max(0.0, now - self._valid_until))
            self._valid_until = 0.0
            self._to_release |= self._owned
            self._set_owned(set())
            self._set_leader(False)

    async def nodes(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every node the database knows (alive or not yet forgotten), and the leader's id."""
        lease = self.config.lease_s

        def read(conn: Connection) -> tuple[list[tuple[Any, ...]], Any, float]:
            now = float(conn.execute(_NOW).fetchone()[0])
            rows = [tuple(r) for r in conn.execute(
                "SELECT id, address, pid, started_at, heartbeat_at, owned FROM cluster_nodes "
                "ORDER BY id")]
            leader = conn.execute("SELECT node_id FROM cluster_leader WHERE name = ? AND "
                                  "expires_at > ?", (LEADER, now)).fetchone()
            return rows, leader[0] if leader else None, now

        rows, leader, now = await self.database.run(read)
        return [{"id": node_id, "address": address, "pid": pid, "leader": node_id == leader,
                 "alive": heartbeat > now - lease, "sirens_owned": owned,
                 "started_at": started, "last_heartbeat": heartbeat,
                 "heartbeat_age_s": round(max(0.0, now - heartbeat), 3),
                 "this_node": node_id == self.node.id}
                for node_id, address, pid, started, heartbeat, owned in rows], leader

    def owner_address(self, siren_id: str) -> tuple[str, str] | None:
        """(node id, API address) of the siren's owner as last read, if it is alive."""
        node = self.owners.get(siren_id)
        address = self.addresses.get(node) if node is not None else None
        return (node, address) if node is not None and address is not None else None

    def leader_address(self) -> str | None:
        return self.addresses.get(self.leader_id) if self.leader_id is not None else None

    def stats(self) -> dict[str, Any]:
        return {"node": self.node.id, "owned": len(self.owned), "leader": self.leader,
                "live_nodes": self.live_nodes, "cycles": self.cycles,
                "failed_cycles": self.failed_cycles, "fenced": self.fenced,
                "slowest_beat_s": round(self.slowest_beat_s, 3)}


_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"

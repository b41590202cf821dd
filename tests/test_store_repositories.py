"""The store's contract, on SQLite and on a real PostgreSQL server alike: every repository
method the engines use, what survives a new connection (a restart), what a refused write leaves
behind (nothing), and what two gateways on one database must not do to each other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest

from siren_gateway.activation.model import Activation, SirenResult, Status
from siren_gateway.alerts.model import Alert
from siren_gateway.config.telemetry import StorageConfig
from siren_gateway.live.bus import Bus
from siren_gateway.maintenance.model import InspectionTask, OrderState, WorkOrder
from siren_gateway.model import Sample
from siren_gateway.store.audit import GENESIS, AuditRow, entry_hash, verify_chain
from siren_gateway.store.errors import DatabaseClosed, StorageError
from siren_gateway.store.postgres import PostgresStore
from siren_gateway.store.repositories import RepositoryStore
from siren_gateway.store.telemetry import TelemetryStore
from tests.databases import StoreFactory, needs_postgres


@asynccontextmanager
async def opened(new_store: StoreFactory) -> AsyncIterator[RepositoryStore]:
    store = new_store()
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


def _activation(activation_id: int, requested_by: str, sirens: list[str],
                state: str = "running") -> Activation:
    results = {s: SirenResult(s, Status.PENDING, activation_id=activation_id, klass="test")
               for s in sirens}
    return Activation(id=activation_id, created_at=1000.0 + activation_id,
                      requested_by=requested_by, klass="test", action="sound", signal="alert",
                      start_at=1000.5 + activation_id, sirens=sirens, results=results,
                      state=state)


async def test_activations_and_their_results_come_back_after_a_restart(
        new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        running = _activation(1, "schedule:occurrence-4:step-0", ["s1", "s2"])
        done = _activation(2, "operator", ["s2"], state="completed")
        await store.activations.write([running, done], [
            (1, "s1", running.results["s1"].record()), (1, "s2", running.results["s2"].record()),
            (2, "s2", done.results["s2"].record())])
        running.results["s1"].status = Status.SOUNDED  # a result changes: written again
        await store.activations.write([running], [(1, "s1", running.results["s1"].record())])
    async with opened(new_store) as store:
        loaded, top = await store.activations.recent_and_running(keep=0)
        assert top == 2 and [a.id for a in loaded] == [1]  # the running one, even with keep=0
        assert loaded[0].results["s1"].status is Status.SOUNDED
        assert loaded[0].results["s2"].status is Status.PENDING
        assert [a.id for a in (await store.activations.recent_and_running(keep=5))[0]] == [2, 1]
        assert await store.activations.find_by_requester("schedule:occurrence-4:step-0") == 1
        assert await store.activations.find_by_requester("nobody") is None
        got = await store.activations.get(2)
        assert got is not None and got.state == "completed" and got.sirens == ["s2"]
        assert await store.activations.get(99) is None
        assert [a.id for a in await store.activations.older(below=2, limit=10)] == [1]
        mine = await store.activations.for_siren("s2", limit=10)
        assert [(m["id"], m["status"]) for m in mine] == [(2, "pending"), (1, "pending")]


async def test_a_refused_write_leaves_nothing_half_written(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        activation = _activation(1, "operator", ["s1"])
        # The second result breaks a NOT NULL column: the activation row must not stay either.
        with pytest.raises(StorageError):
            await store.activations.write([activation], [
                (1, "s1", activation.results["s1"].record()), (1, None, {})])  # type: ignore[list-item]
        assert await store.activations.get(1) is None
        assert (await store.activations.recent_and_running(keep=10))[1] == 0


def _alert(alert_id: int, siren: str | None, raised: float, cleared: float | None = None
           ) -> Alert:
    return Alert(id=alert_id, rule="offline", siren_id=siren, zones=["north"],
                 severity="major", message="离线 offline", raised_at=raised,
                 state="cleared" if cleared else "active", cleared_at=cleared)


async def test_alerts_by_state_by_siren_and_by_period(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        await store.alerts.write([_alert(1, "s1", 100.0, 200.0), _alert(2, "s1", 300.0),
                                  _alert(3, "s2", 150.0, 160.0), _alert(4, None, 120.0)])
        await store.alerts.write([_alert(3, "s2", 150.0, 170.0)])  # updated in place
    async with opened(new_store) as store:
        active, top = await store.alerts.not_cleared()
        assert top == 4 and sorted(a.id for a in active) == [2, 4]
        assert [a.id for a in await store.alerts.for_siren("s1", 10)] == [2, 1]
        assert (await store.alerts.for_siren("s1", 10))[1].message == "离线 offline"
        # Active at some moment of [165, 250): 1 (until 200), 3 (until 170); not 2 (from 300),
        # not 4 (no siren).
        assert sorted(a.id for a in await store.alerts.overlapping(165.0, 250.0)) == [1, 3]
        assert sorted(a.id for a in await store.alerts.overlapping(250.0, 400.0)) == [2]


def _audit_row(action: str, at: float) -> AuditRow:
    return (at, "admin", "admin", action, "s1", json.dumps({"n": at}), "ok", "127.0.0.1", "t")


async def test_the_audit_log_is_a_chain_that_cannot_be_edited(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        first = await store.audit.append([_audit_row("login", 1.0)])
        last = await store.audit.append([_audit_row("activate", 2.0),
                                         _audit_row("login", 3.0)])
        assert last == first + 2
        newest = await store.audit.newest(limit=10)
        assert [row[4] for row in newest] == ["login", "activate", "login"]
        assert newest[-1][-1] == entry_hash(GENESIS, _audit_row("login", 1.0))
        assert [row[0] for row in await store.audit.newest(10, before_id=last)] == [
            first + 1, first]
        assert len(await store.audit.newest(10, action="login")) == 2
        report = await store.database.run(verify_chain)
        assert report.ok and report.entries == 3

        def tamper(conn: object) -> None:
            conn.execute("UPDATE audit SET username = 'mallory'")  # type: ignore[attr-defined]

        with pytest.raises(StorageError, match="append-only"):
            await store.database.run(tamper)


async def test_two_gateways_appending_at_once_keep_one_chain(new_store: StoreFactory) -> None:
    async with opened(new_store) as one, opened(new_store) as two:
        await asyncio.gather(*(store.audit.append([_audit_row(f"{name}-{i}", float(i))])
                               for i in range(20) for name, store in (("a", one), ("b", two))))
        report = await one.database.run(verify_chain)
        assert report.ok and report.entries == 40, report


async def test_password_upgrades_replace_the_last(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        await store.password_upgrades.put("admin", "aa", "$argon2id$1", 1.0)
        await store.password_upgrades.put("admin", "bb", "$argon2id$2", 2.0)
        await store.password_upgrades.put("operator", "cc", "$argon2id$3", 3.0)
    async with opened(new_store) as store:
        assert sorted(await store.password_upgrades.all()) == [
            ("admin", "bb", "$argon2id$2"), ("operator", "cc", "$argon2id$3")]


async def test_the_outbox_keeps_order_and_forgets_old_deliveries(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        await store.outbox.add([("n1", "webhook:a", '{"x": 1}', 100.0),
                                ("n2", "webhook:a", '{"x": 2}', 101.0),
                                ("n3", "mqtt:schedule", '{"x": 3}', 102.0)])
        await store.outbox.add([("n1", "webhook:a", '{"x": "again"}', 200.0)])  # ignored
        first = await store.outbox.oldest_pending("webhook:a")
        assert first is not None and first[1:] == ("n1", "webhook:a", '{"x": 1}', 0, 100.0)
        await store.outbox.attempted(first[0], now=100.5, next_at=110.0)  # retry later
        again = await store.outbox.oldest_pending("webhook:a")
        assert again is not None and again[1] == "n1" and again[4:] == (1, 110.0)
        await store.outbox.attempted(first[0], now=111.0, state="delivered")
        nxt = await store.outbox.oldest_pending("webhook:a")
        assert nxt is not None and nxt[1] == "n2"
        assert await store.outbox.counts() == {"pending": 2, "delivered": 1}
        # More than a week later, what finished is pruned at the next attempt.
        await store.outbox.attempted(nxt[0], now=100.0 + 8 * 86400, state="failed")
        assert await store.outbox.counts() == {"pending": 1}


async def test_schedules_and_their_occurrences(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        schedules = store.schedules
        stored = await schedules.replace_config_plans({"p918": '{"a": 1}'}, now=10.0)
        assert stored == [("p918", "config", '{"a": 1}', 10.0)]
        # Unchanged: keeps its date; changed: a new one.
        assert (await schedules.replace_config_plans({"p918": '{"a": 1}'}, now=20.0))[0][3] == 10.0
        assert (await schedules.replace_config_plans({"p918": '{"a": 2}'}, now=30.0))[0][3] == 30.0
        await schedules.save_api_plan("weekly", '{"b": 1}', now=40.0)
        await schedules.add_planned([("p918", 1000.0, "2027-09-18", "scheduled", ""),
                                     ("p918", 2000.0, "2028-09-18", "scheduled", ""),
                                     ("weekly", 1500.0, "2027-09-20", "scheduled", "")])
        await schedules.add_planned([("p918", 1000.0, "2027-09-18", "missed", "again")])  # kept
        assert await schedules.planned_around("p918", now=1500.0) == (1000.0, 2, {2000.0})
        run_now = await schedules.add_run_now("p918", 1200.0, "2027-09-18", "by hand")
        occurrence = await schedules.planned_at("p918", 1000.0)
        assert occurrence is not None and occurrence.state == "scheduled"
        assert occurrence.note == ""
        # Claimed once: the second claim from the same state finds it gone.
        assert await schedules.transition(occurrence.id, ("scheduled",), state="running",
                                          fired_at=1000.2, steps={"0": {"activation": 7}})
        assert not await schedules.transition(occurrence.id, ("scheduled",), state="running")
        claimed = await schedules.get(occurrence.id)
        assert claimed is not None and claimed.steps == {"0": {"activation": 7}}
        assert claimed.fired_at == 1000.2
        with pytest.raises(ValueError):
            await schedules.transition(occurrence.id, None, plan_id="other")
        assert [o.scheduled_at for o in await schedules.unfinished()] == [
            1000.0, 1200.0, 1500.0, 2000.0]
        assert [o.id for o in await schedules.newest("p918", 2)][-1] == (
            (await schedules.planned_at("p918", 2000.0)) or occurrence).id
        assert len(await schedules.newest(None, 10)) == 4
        assert run_now in {o.id for o in await schedules.newest(None, 10)}
        # Saving an API plan again drops its pending planned occurrences; deleting cancels.
        await schedules.save_api_plan("weekly", '{"b": 2}', now=50.0)
        assert [o.plan_id for o in await schedules.newest("weekly", 10)] == []
        await schedules.add_planned([("weekly", 1600.0, "2027-09-27", "scheduled", "")])
        await schedules.delete_plan("weekly")
        gone = await schedules.newest("weekly", 10)
        assert [(o.state, o.note) for o in gone] == [("cancelled", "schedule deleted")]
        assert [p[0] for p in await schedules.replace_config_plans({}, now=60.0)] == []


def _order(order_id: int, siren: str, state: OrderState, created: float) -> WorkOrder:
    return WorkOrder(id=order_id, siren_id=siren, cause="amplifier fault", priority="high",
                     state=state, created_at=created, created_by="alerts",
                     faults=["amplifier"], audio=True, notes=[{"text": "换功放"}])


async def test_work_orders_open_closed_and_by_siren(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        await store.work_orders.write([
            _order(1, "s1", OrderState.VERIFIED, 10.0), _order(2, "s1", OrderState.CANCELLED, 20.0),
            _order(3, "s2", OrderState.OPEN, 30.0), _order(4, "s1", OrderState.VERIFIED, 40.0)])
        await store.work_orders.write([_order(3, "s2", OrderState.IN_PROGRESS, 30.0)])
    async with opened(new_store) as store:
        orders, top = await store.work_orders.open_and_recent(keep_closed=1)
        assert top == 4 and [(o.id, o.state) for o in orders] == [
            (3, OrderState.IN_PROGRESS), (4, OrderState.VERIFIED)]
        got = await store.work_orders.get(3)
        assert got is not None and got.notes == [{"text": "换功放"}] and got.audio
        assert await store.work_orders.get(9) is None
        assert [o.id for o in await store.work_orders.for_siren("s1", 2)] == [4, 2]
        assert [o.id for o in await store.work_orders.created_between(15.0, 40.0)] == [2, 3]


def _task(task_id: int, plan: str, siren: str, at: float) -> InspectionTask:
    return InspectionTask(id=task_id, plan_id=plan, siren_id=siren, scheduled_at=at,
                          due_at=at + 86400, checklist=[{"id": "horn", "text": "horn"}])


async def test_inspection_tasks_are_made_once_per_occurrence(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        made = await store.inspections.create([_task(1, "monthly", "s1", 100.0),
                                               _task(2, "monthly", "s2", 100.0)])
        assert [t.id for t in made] == [1, 2]
        # The same occurrence again (a restart): nothing new.
        assert await store.inspections.create([_task(3, "monthly", "s1", 100.0)]) == []
        assert [t.id for t in await store.inspections.create(
            [_task(4, "monthly", "s1", 200.0)])] == [4]
        done = _task(1, "monthly", "s1", 100.0)
        done.state, done.completed_by, done.results = "done", "tech", {"horn": {"ok": True}}
        await store.inspections.write([done])
    async with opened(new_store) as store:
        tasks, top = await store.inspections.open_and_recent(keep_done=5)
        assert top == 4 and [(t.id, t.state) for t in tasks] == [
            (1, "done"), (2, "open"), (4, "open")]
        assert [t.id for t in (await store.inspections.open_and_recent(keep_done=0))[0]] == [2, 4]
        assert await store.inspections.last_occurrences() == {"monthly": 200.0}
        got = await store.inspections.get(1)
        assert got is not None and got.results == {"horn": {"ok": True}}
        assert [t.id for t in await store.inspections.for_siren("s1", 10)] == [4, 1]
        assert [t.id for t in await store.inspections.scheduled_between(50.0, 150.0)] == [1, 2]


async def test_the_asset_register_and_its_history(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        await store.assets.put([("s1", {"serial": "A-1"}, {"serial": "A-1"})],
                               [("s1", 1.0, "site file", {"serial": [None, "A-1"]})])
        await store.assets.put([("s1", {"serial": "A-2", "notes": "塔顶"}, {"serial": "A-1"})],
                               [("s1", 2.0, "admin", {"serial": ["A-1", "A-2"]})])
    async with opened(new_store) as store:
        assert await store.assets.all() == {
            "s1": ({"serial": "A-2", "notes": "塔顶"}, {"serial": "A-1"})}
        assert await store.assets.changes("s1", 10) == [
            ("s1", 2.0, "admin", {"serial": ["A-1", "A-2"]}),
            ("s1", 1.0, "site file", {"serial": [None, "A-1"]})]


async def test_sessions_are_shared_touched_and_revoked(new_store: StoreFactory) -> None:
    async with opened(new_store) as store:
        await store.sessions.put(("d1", "admin", "admin", 1.0, 1000.0, 1.0), now=1.0)
        await store.sessions.put(("d2", "admin", "admin", 2.0, 1000.0, 2.0), now=2.0)
        await store.sessions.put(("d3", "viewer", "viewer", 3.0, 5.0, 3.0), now=3.0)
        assert await store.sessions.get("d1") == ("d1", "admin", "admin", 1.0, 1000.0, 1.0)
        assert await store.sessions.touch("d1", 50.0)
        assert await store.sessions.touch("d1", 40.0)  # an older use does not go back
        touched = await store.sessions.get("d1")
        assert touched is not None and touched[5] == 50.0
        await store.sessions.put(("d4", "viewer", "viewer", 9.0, 1000.0, 9.0), now=9.0)
        assert await store.sessions.get("d3") is None  # expired: pruned at the next put
        await store.sessions.delete("d1")
        assert not await store.sessions.touch("d1", 60.0)
        await store.sessions.delete_user("admin")
        assert await store.sessions.get("d2") is None
        assert await store.sessions.get("d4") is not None


async def test_telemetry_is_stored_and_read_back(new_store: StoreFactory) -> None:
    from datetime import UTC, datetime, timedelta

    async with opened(new_store) as store:
        telemetry = TelemetryStore(store.database, Bus(), StorageConfig(
            telemetry_min_interval_s=0))
        now = datetime.now(UTC)
        samples = [Sample("s1", now - timedelta(seconds=10 - i),
                          {"battery_v": 26.0 + i / 10, "state": "idle"}, frozenset({"door"}))
                   for i in range(10)]
        await telemetry._flush(samples)
        rows = await telemetry.history("s1", now - timedelta(minutes=1), limit=100)
        assert [r["values"]["battery_v"] for r in rows] == [26.0 + i / 10 for i in range(10)]
        assert rows[0]["faults"] == ["door"]
        buckets = await telemetry.history("s1", now - timedelta(minutes=1), limit=2)
        assert 1 <= len(buckets) <= 2 and sum(b["samples"] for b in buckets) == 10
        assert await telemetry.apply_retention() == 0


async def test_a_stopped_store_says_so(new_store: StoreFactory) -> None:
    store = new_store()
    with pytest.raises(DatabaseClosed):
        await store.alerts.not_cleared()
    await store.start()
    await store.stop()
    with pytest.raises(DatabaseClosed):
        await store.alerts.not_cleared()


@needs_postgres
async def test_postgres_connection_lost_is_a_storage_error_then_reconnects(
        postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.start()
    try:
        await store.alerts.write([_alert(1, "s1", 1.0)])
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "application_name LIKE 'siren-gateway%' AND pid != pg_backend_pid() "
                          "AND datname = current_database()")  # this test's own database only
        with pytest.raises(StorageError):
            await store.alerts.not_cleared()  # the server hung up on this connection
        active, _ = await store.alerts.not_cleared()  # and the next call opens a new one
        assert [a.id for a in active] == [1]
    finally:
        await store.stop()


@needs_postgres
async def test_an_unreachable_postgres_refuses_to_start_with_a_clear_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:9/none?connect_timeout=2")
    with pytest.raises(StorageError, match=r"cannot reach PostgreSQL 127\.0\.0\.1:9/none"):
        await store.start()
    await store.stop()


async def test_a_session_made_on_one_node_is_good_on_another_until_revoked(
        new_store: StoreFactory) -> None:
    from siren_gateway.security.auth import Principal, Role, TokenStore
    from siren_gateway.security.sessions import Sessions

    async with opened(new_store) as one, opened(new_store) as two:
        leader = Sessions(TokenStore(3600, 600, 5), one.sessions, check_s=0)
        follower = Sessions(TokenStore(3600, 600, 5), two.sessions, check_s=0)
        session = leader.tokens.issue(Principal("operator", Role.OPERATOR))
        await leader.issued(session)
        assert await follower.resolve(session.token) == Principal("operator", Role.OPERATOR)
        assert await follower.resolve("not-a-token") is None
        await leader.revoke(session.token)  # a logout on the leader ends it everywhere
        assert await follower.resolve(session.token) is None
        again = leader.tokens.issue(Principal("viewer", Role.VIEWER))
        await leader.issued(again)
        assert await follower.resolve(again.token) is not None
        await follower.revoke_user("viewer")  # an admin's revocation on any node
        assert await leader.resolve(again.token) is None

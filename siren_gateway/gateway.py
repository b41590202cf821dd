"""The composition root: builds every long-lived part from the site and owns their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from siren_gateway.activation.engine import ActivationEngine
from siren_gateway.activation.operator import OperatorCommands
from siren_gateway.alerts.engine import AlertEngine
from siren_gateway.alerts.notifiers import MqttAlertNotifier, WebhookNotifier
from siren_gateway.alerts.outbox import Outbox
from siren_gateway.cluster.leadership import LeaderRole
from siren_gateway.cluster.live import LiveExchange
from siren_gateway.cluster.membership import Membership, NodeIdentity
from siren_gateway.cluster.remote import ClusterLink, NodeClient
from siren_gateway.config.links import MqttLink
from siren_gateway.config.site import Site
from siren_gateway.coverage.engine import CoverageEngine
from siren_gateway.links.base import SirenLink
from siren_gateway.links.modbus import ModbusLinks
from siren_gateway.links.mqtt import MqttHub
from siren_gateway.links.poller import Poller
from siren_gateway.links.status import StatusReader
from siren_gateway.live.bus import Bus
from siren_gateway.live.fleet import Fleet
from siren_gateway.maintenance.assets import AssetRegister
from siren_gateway.maintenance.engine import WorkOrders
from siren_gateway.maintenance.history import SirenHistory
from siren_gateway.maintenance.inspections import Inspections
from siren_gateway.metrics import GatewayCollector, Instruments
from siren_gateway.model import LinkError, Sample
from siren_gateway.profiles.mqtt import MqttProfile
from siren_gateway.runtime.clock import SystemClock
from siren_gateway.runtime.lifecycle import Service, running
from siren_gateway.scheduling.engine import Scheduler
from siren_gateway.scheduling.executor import ActivationExecutor
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import Principal, Role, TokenStore
from siren_gateway.security.credentials import Credentials
from siren_gateway.security.login import Logins
from siren_gateway.security.sessions import Sessions
from siren_gateway.store.postgres import PostgresStore
from siren_gateway.store.repositories import RepositoryStore
from siren_gateway.store.sqlite import SqliteStore, database_path
from siren_gateway.store.telemetry import TelemetryStore
from siren_gateway.telemetry.sink import InfluxSink

log = logging.getLogger(__name__)


async def _poll_via_owner(link: SirenLink) -> Sample:
    if not isinstance(link, ClusterLink):
        raise LinkError("stopped", "not a cluster node's siren")
    return await link.poll_via_owner()


class Gateway:
    def __init__(self, site: Site, database: str | Path | None = None,
                 node: NodeIdentity | None = None,
                 on_demoted: Callable[[], None] | None = None) -> None:
        self.site = site
        self.bus = Bus()
        self.instruments = Instruments()
        self.clock = SystemClock()  # one clock for the engines that measure time
        config = site.config
        catalogue = site.catalogue  # what every part may know; its own section beside it
        self.fleet = Fleet(catalogue, config.polling, config.mqtt, self.bus, self.clock)
        path = database_path(site, database)
        self.store: RepositoryStore = (PostgresStore(config.database.url) if config.database
                                       else SqliteStore(path))
        self.db = self.store.database  # the telemetry history shares the database
        # One node of several on one PostgreSQL database (docs/cluster.md): it polls and
        # commands only the sirens it owns, and mirrors the others'.
        self.membership: Membership | None = None
        self.live: LiveExchange | None = None
        self.leader_role: LeaderRole | None = None
        self.node_client = NodeClient()
        self.cluster_secret = config.cluster.resolved_secret()
        owns = None
        if node is not None:
            if config.database is None:
                raise ValueError("a cluster node (--node-id) needs database: {url: ...} in the "
                                 "site file: the nodes share one PostgreSQL database")
            if self.cluster_secret is None:
                raise ValueError("a cluster node needs a shared secret (SIREN_CLUSTER_SECRET, "
                                 "or cluster: {secret: ...}, 16 characters at least): the "
                                 "nodes deliver commands to each other with it")
            self.membership = Membership(config.database.url, node,
                                         [s.id for s in config.sirens], config.cluster)
            self.live = LiveExchange(config.database.url, self.membership, self.fleet,
                                     config.cluster)
            owns = self.membership.owns
        self.telemetry = TelemetryStore(self.db, self.bus, site.config.storage)
        self.influx: InfluxSink | None = None
        if site.config.influx is not None:
            spool = path.parent / site.config.influx.spool_dir
            self.influx = InfluxSink(config.sirens, self.bus, site.config.influx, spool)
        self.links: dict[str, SirenLink] = {}
        # Nothing reaches a siren this node does not own (a cluster node's fence).
        fence: Callable[[SirenLink], SirenLink] | None = None
        membership, secret = self.membership, self.cluster_secret
        if owns is not None and membership is not None and secret is not None:
            def fence(link: SirenLink) -> SirenLink:
                return ClusterLink(link, membership, secret, self.node_client)
        modbus, mqtt = [], []
        for siren in site.config.sirens:
            profile = site.profiles[siren.profile]
            if isinstance(siren.link, MqttLink):
                assert isinstance(profile, MqttProfile)  # load_site checked the pairing
                mqtt.append((siren, profile))
            else:
                assert not isinstance(profile, MqttProfile)
                modbus.append((siren.id, siren.link, profile))
        self.modbus = ModbusLinks(modbus, self.links, fence)
        self.mqtt: MqttHub | None = None
        if mqtt and site.config.mqtt is not None:
            self.mqtt = MqttHub(site.config.mqtt, self.fleet, mqtt, owns,
                                node.id if node is not None else None)
            self.links.update(self.mqtt.links if fence is None else
                              {siren: fence(link) for siren, link in self.mqtt.links.items()})
        self.poller = Poller(self.fleet, self.links, self.instruments, owns=owns)
        if self.membership is not None:
            self.membership.on_ownership(lambda gained, _: self.poller.poll_soon(gained))
        self.audit = AuditLog(self.store)
        # One command exchange per siren at a time, across activations and operator commands.
        self.siren_locks: dict[str, asyncio.Lock] = {}
        self.activations = ActivationEngine(catalogue, config.activation, self.fleet, self.links,
                                            StatusReader(self.fleet, self.poller, owns,
                                                         _poll_via_owner if owns else None),
                                            self.store, self.audit,
                                            self.bus, self.siren_locks, self.instruments)
        self.commands = OperatorCommands(site.profiles, config.activation, self.fleet, self.links, self.audit,
                                         self.activations, self.instruments)
        self.work_orders = WorkOrders(config.maintenance, catalogue, self.fleet, self.bus,
                                      self.store, self.audit, self.activations)
        self.inspections = Inspections(config.maintenance, catalogue, self.fleet, self.bus,
                                       self.store, self.audit, self.activations)
        self.assets = AssetRegister(catalogue, self.fleet, self.store, self.audit)
        self.history = SirenHistory(catalogue, self.work_orders.audio_faults,
                                    config.site.timezone, self.store, self.clock,
                                    frozenset(config.alerts.faults))
        self.alerts = AlertEngine(config.alerts, config.coverage.severity, self.fleet, self.bus,
                                  self.store, self.audit, self.clock,
                                  listen_from_start=node is None)
        self.coverage = CoverageEngine(catalogue, config.coverage, self.fleet, self.bus)
        self.scheduler = Scheduler(
            config.schedules, config.sirens, self.store, self.bus, self.audit,
            ActivationExecutor(self.activations, lambda tag: Principal(tag, Role.OPERATOR)),
            prepare_s=config.activation.sync_lead_s + 1.0, clock=self.clock)
        alert_config = site.config.alerts
        self.outbox = Outbox(self.store)
        self.webhooks = [WebhookNotifier(self.bus, hook, self.outbox)
                         for hook in alert_config.webhooks]
        self.mqtt_alerts = (MqttAlertNotifier(self.bus, alert_config.mqtt, self.outbox,
                                              self.alerts.query)
                            if alert_config.mqtt else None)
        api = site.config.api
        self.credentials = Credentials(site.config.users, self.store)
        self.tokens = TokenStore(api.token_ttl_s, api.token_idle_s, api.tokens_per_user)
        # Sessions shared through the database by a cluster's nodes; one gateway's stay here.
        self.sessions = Sessions(self.tokens, self.store.sessions if node is not None else None)
        self.logins = Logins(api, self.credentials, self.tokens, self.audit, self.bus)
        if self.membership is not None:
            self.leader_role = LeaderRole(self.membership, self._leader_parts(),
                                          on_demoted or (lambda: None))
        self.started_at: float | None = None
        self._running: AsyncExitStack | None = None
        self.instruments.registry.register(GatewayCollector(self))

    def parts(self) -> list[tuple[str, Service]]:
        """Every long-lived part, in start order; they stop in exact reverse order.

        Storage first and last; the links before what reads the fleet; alerts before coverage
        (its first count may already be low) and before the notifiers that publish them; the
        poller, then activations (which resume what a restart interrupted), then work orders
        and inspections (whose verifier and evidence ask activations for silent tests), then
        the scheduler (which resumes the steps those activations belong to).

        A cluster node runs the leader's parts (_leader_parts) only while it leads, after its
        own; those keep the same order among themselves.
        """
        single = self.leader_role is None
        parts: list[tuple[str, Service]] = [
            ("store", self.store), ("audit log", self.audit), ("node client", self.node_client)]
        if single:
            parts.append(("outbox", self.outbox))
        parts.append(("credentials", self.credentials))
        if self.influx is not None:
            parts.append(("influx sink", self.influx))
        if self.membership is not None and self.live is not None:
            parts += [("cluster membership", self.membership), ("live exchange", self.live)]
        parts += [("telemetry store", self.telemetry), ("modbus links", self.modbus)]
        if self.mqtt is not None:
            parts.append(("mqtt hub", self.mqtt))
        if self.leader_role is not None:
            return [*parts, ("poller", self.poller), ("leader role", self.leader_role)]
        return [*parts, ("alert engine", self.alerts), ("coverage engine", self.coverage),
                *self._notifier_parts(), ("poller", self.poller), *self._engine_parts()]

    def _leader_parts(self) -> list[tuple[str, Service]]:
        """What only one gateway of a site may run at a time, because it numbers records or
        sends commands and notifications: in a cluster, the leader (in parts()' order). The
        coverage engine too: its answers and alerts are the leader's, and on every node it
        would redo the whole fleet's work for nobody (bench/failover.py --scale)."""
        return [("alert engine", self.alerts), ("coverage engine", self.coverage),
                ("outbox", self.outbox), *self._notifier_parts(), *self._engine_parts()]

    def _notifier_parts(self) -> list[tuple[str, Service]]:
        parts: list[tuple[str, Service]] = [
            (f"webhook {hook.config.url}", hook) for hook in self.webhooks]
        if self.mqtt_alerts is not None:
            parts.append(("mqtt alert notifier", self.mqtt_alerts))
        return parts

    def _engine_parts(self) -> list[tuple[str, Service]]:
        return [("activation engine", self.activations), ("work orders", self.work_orders),
                ("inspections", self.inspections), ("asset register", self.assets),
                ("scheduler", self.scheduler)]

    async def start(self) -> None:
        """Start every part in order; if one fails, stop the ones already started (in reverse)
        and raise."""
        if self._running is not None:
            raise RuntimeError("the gateway is already running")
        stack = AsyncExitStack()
        try:
            for name, part in self.parts():
                await stack.enter_async_context(running(name, part))
        except BaseException:
            await stack.aclose()
            raise
        self._running = stack
        self.started_at = time.time()
        log.info("gateway started: %d sirens, %d Modbus endpoints, %d over MQTT",
                 len(self.fleet.states), len(self.modbus.endpoints),
                 len(self.mqtt.links) if self.mqtt is not None else 0)

    async def stop(self) -> None:
        running_parts, self._running = self._running, None
        if running_parts is None:
            return
        await running_parts.aclose()
        self.started_at = None
        log.info("gateway stopped")

    def health(self) -> dict[str, Any]:
        endpoints = self.modbus.endpoints
        polls_ok = sum(s.polls_ok for s in self.fleet.states.values())
        polls_failed = sum(s.polls_failed for s in self.fleet.states.values())
        reasons: dict[str, int] = {}
        for endpoint in endpoints:
            for reason, n in endpoint.stats.failures_by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
        return {
            "status": "ok" if self.started_at else "starting",
            "site": self.site.config.site.name,
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at else 0.0,
            "sirens": self.fleet.counts() | {"total": len(self.fleet.states)},
            "polls": {"ok": polls_ok, "failed": polls_failed, "failures_by_reason": reasons},
            "endpoints": len(endpoints),
            "mqtt": self.mqtt.health() if self.mqtt is not None else None,
            "bus": self.bus.stats(),
            "scheduler": self.scheduler.stats(),
            "telemetry_store": self.telemetry.stats(),
            "storage": self.db.health.as_dict() | {"audit": self.audit.stats()},
            "cluster": None if self.membership is None or self.live is None else
            self.membership.stats() | {
                "live": self.live.stats(), "skipped_not_owned": self.poller.skipped_not_owned,
                "leading": self.leader_role is not None and self.leader_role.active},
            "sessions": self.tokens.count(),
            "influx_sink": self.influx.stats() if self.influx is not None else None,
            "alerts": {"active": sum(a.state != "cleared" for a in self.alerts.alerts.values()),
                       "evaluations": self.alerts.evaluations,
                       "webhooks": [w.stats() for w in self.webhooks],
                       "mqtt": self.mqtt_alerts.stats() if self.mqtt_alerts else None},
        }

"""MQTT links on aiomqtt: one client for every MQTT siren; telemetry and acks in, commands out.

The hub owns the one connection: it reconnects with back-off and resubscribes (clean session,
so a broker never replays stale commands to a device or stale telemetry to us), validates every
inbound payload at the edge and hands typed samples to the fleet. A bad payload is counted per
reason and logged at a bounded rate; it never ends the loop and never holds up other sirens.

A command is published at QoS 1 with an id that the device's acknowledgement echoes. `send`
returns once the device accepted it, raises LinkError("rejected") when it refused, and
LinkError("unacknowledged") when no answer came in time; a command that could not even reach
the broker raises LinkError("broker_unavailable"), which is certain: nothing was delivered.

One module, past 400 lines: the hub and its links share the connection, the routing table and
the pending-command map; the client adapter is mqtt_client.py, decoding lives with the profile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from siren_gateway.config.links import MqttBrokerConfig, MqttLink
from siren_gateway.config.site import SirenConfig
from siren_gateway.links import mqtt_client
from siren_gateway.live.fleet import Fleet, Reachability
from siren_gateway.model import (
    SEQUENCE_POINT,
    Command,
    CommandKind,
    LinkError,
    Sample,
    Value,
    utc_now,
)
from siren_gateway.profiles.mqtt import Ack, MqttProfile, PayloadError
from siren_gateway.runtime.logs import RateLimitedLog
from siren_gateway.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Acks and progress for this many recent commands per siren are remembered, to tell late and
# duplicate acks from ones about commands we never sent, and to show an activation its
# command's progress. Commands to one siren go one at a time (its lock), so 8 reach far back.
# It was 32: bounded, but filled only after hours of commands, and a soak's heap kept growing
# until then (~2.3 MiB per 10 min at 2,000 sirens, most of it these and the command ids).
_RECENT_COMMANDS = 8
# A device that took a SET_CLOCK may report earlier timestamps than before; after this many
# "older than the last" messages in a row, its clock is taken to have jumped, not the message.
_CLOCK_JUMP_AFTER = 3
# Devices accept a command until expires_at on their own clock; the margin covers clock skew.
EXPIRY_MARGIN_S = 30.0


@dataclass
class MqttStats:
    connected: bool = False
    connects: int = 0
    connection_losses: int = 0
    messages: int = 0
    telemetry: int = 0
    state_messages: int = 0
    acks: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    dropped_queue_full: int = 0
    commands_published: int = 0
    commands_unacknowledged: int = 0
    acks_inferred_from_telemetry: int = 0
    last_error: str | None = None

    def reject(self, reason: str) -> None:
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


class MqttSirenLink:
    """One MQTT siren controller. It reports by itself: `poll` returns its latest report."""

    polled = False
    # Re-publishing a command with the same id is harmless by the scheme (the device answers
    # again instead of acting again), so an unanswered command may be sent again.
    idempotent_resend = True

    def __init__(self, hub: MqttHub, siren: SirenConfig, device_id: str,
                 profile: MqttProfile) -> None:
        self.hub = hub
        self.siren_id = siren.id
        self.device_id = device_id
        self.profile = profile
        topics = profile.topics(hub.config.topic_prefix, device_id)
        self.telemetry_topic, self.state_topic = topics.telemetry, topics.state
        self.command_topic, self.ack_topic = topics.command, topics.ack
        self.device_state: str | None = None  # what the retained state topic says
        self.last_device_ts: float | None = None
        self._older_in_a_row = 0
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._pending_sequence: dict[int, str] = {}  # sequence -> id of the command awaiting ack
        # The last report's points, its time and the times of the points it carried, to fill
        # in what a partial report leaves out.
        self._last_values: dict[str, Value] | None = None
        self._last_stamp = 0.0
        self._last_carried: dict[str, float] = {}
        self.sequence_readback = profile.spec.sequence_readback is not False
        self._recent: dict[str, str] = {}  # id -> "answered" | "expired", oldest first
        self.last_progress: dict[str, str] = {}  # command id -> sounding/finished/failed

    @property
    def timeout_s(self) -> float:
        return self.hub.config.ack_timeout_s

    def progress(self, command_id: str) -> str | None:
        return self.last_progress.get(command_id)

    async def poll(self) -> Sample:
        state = self.hub.fleet.states[self.siren_id]
        if state.sample is None or state.reachability is not Reachability.ONLINE:
            raise LinkError("no_telemetry", f"siren is {state.reachability.value}")
        return state.sample

    async def send(self, command: Command) -> None:
        hub = self.hub
        loop = asyncio.get_running_loop()
        timeout = hub.config.ack_timeout_s
        deadline = loop.time() + timeout
        issued = time.time()
        payload = self.profile.encode_command(command, issued, issued + timeout + EXPIRY_MARGIN_S)
        command_id = command.command_id
        future: asyncio.Future[Ack] = loop.create_future()
        self._pending[command_id] = future
        sequence = command.sequence & 0xFFFF
        if sequence:
            self._pending_sequence[sequence] = command_id
        try:
            await hub.publish(self.command_topic, payload, deadline)
            if self._took(command, issued):  # telemetry already showed it: no ack to wait for
                hub.stats.acks_inferred_from_telemetry += 1
                return
            try:
                async with asyncio.timeout_at(deadline):
                    ack = await future
            except TimeoutError:
                hub.stats.commands_unacknowledged += 1
                raise LinkError("unacknowledged",
                                f"no acknowledgement within {timeout:g} s") from None
        finally:
            self._pending.pop(command_id, None)
            if self._pending_sequence.get(sequence) == command_id:
                del self._pending_sequence[sequence]
            # (a timed-out wait cancels the future: cancelled means no answer came)
            answered = future.done() and not future.cancelled()
            self._remember(command_id, "answered" if answered else "expired")
        if ack.status == "rejected":
            raise LinkError("rejected", ack.reason or "refused by the controller")
        if ack.status == "inferred":
            hub.stats.acks_inferred_from_telemetry += 1
        if command.kind is CommandKind.SET_CLOCK:
            self.last_device_ts = None  # its timestamps may now run from an earlier point

    def _took(self, command: Command, since: float) -> bool:
        """The device's own report since `since` shows it carried out the command."""
        sample = self.hub.fleet.states[self.siren_id].sample
        sequence = command.sequence & 0xFFFF
        return (sequence != 0 and sample is not None and sample.received_at.timestamp() >= since
                and sample.values.get(SEQUENCE_POINT) == sequence)

    def on_sample(self, sample: Sample) -> None:
        """A report that shows a pending command's sequence answers it: the ack may be lost,
        and waiting for it would only delay the proof."""
        if not self._pending_sequence:
            return
        command_id = self._pending_sequence.get(sample.values.get(SEQUENCE_POINT))  # type: ignore[arg-type]
        future = self._pending.get(command_id) if command_id else None
        if future is not None and not future.done():
            future.set_result(Ack(command_id or "", "inferred", "", sample.device_time))

    def _remember(self, command_id: str, outcome: str) -> None:
        self._recent[command_id] = outcome
        while len(self._recent) > _RECENT_COMMANDS:
            del self._recent[next(iter(self._recent))]

    # -- inbound, called by the hub for this siren's topics ---------------------------------

    def on_telemetry(self, payload: bytes, now: float) -> Sample:
        profile = self.profile
        values, faults, device_time = profile.decode_telemetry_bytes(payload)
        ts = device_time.timestamp()
        max_age = profile.spec.max_message_age_s
        if now - ts > max_age:
            raise PayloadError("stale_timestamp", f"{now - ts:.0f} s old")
        if ts - now > max_age:
            raise PayloadError("future_timestamp", f"{ts - now:.0f} s ahead")
        last = self.last_device_ts
        if last is not None and ts <= last:
            if ts == last:
                raise PayloadError("duplicate", f"timestamp {ts} seen already")
            self._older_in_a_row += 1
            if self._older_in_a_row < _CLOCK_JUMP_AFTER:
                raise PayloadError("out_of_order", f"{last - ts:.3f} s older than the last")
        self._older_in_a_row = 0
        self.last_device_ts = ts
        received = utc_now()
        stamp = received.timestamp()
        known = self._last_values
        carried: dict[str, float] = {}
        if known is not None and len(values) < len(profile.spec.points):
            # A partial report: what it leaves out (or sends as null) keeps its last value and
            # the time it was reported; a fault clears only when reported clear.
            last_at, last_carried = self._last_stamp, self._last_carried
            for name, value in known.items():
                if name not in values:
                    values[name] = value
                    carried[name] = last_carried.get(name, last_at)
            faults = profile.faults(values)
        # The last report's values (complete after the filling above) stand for what is
        # known; kept by reference, not copied, as nothing changes a sample's values.
        # (Copying them into a dict of values and one of times cost ~2 us per message.)
        self._last_values, self._last_stamp, self._last_carried = values, stamp, carried
        return Sample(self.siren_id, received, values, faults, device_time, carried)

    def on_ack(self, ack: Ack) -> str | None:
        """Deliver an ack to its waiting command; a reason string when it fits no command."""
        future = self._pending.get(ack.command_id)
        if ack.status in ("accepted", "rejected"):
            if future is not None and not future.done():
                future.set_result(ack)
                return None
            outcome = self._recent.get(ack.command_id)
            if outcome == "expired":
                return "late_ack"
            return "duplicate_ack" if outcome or future is not None else "unknown_command"
        # Progress after acceptance: sounding, finished, failed.
        if future is not None and not future.done():
            # The "accepted" went missing but the device is clearly acting on the command.
            future.set_result(Ack(ack.command_id, "accepted", "", ack.device_time))
        elif ack.command_id not in self._recent and future is None:
            return "unknown_command"
        self.last_progress[ack.command_id] = ack.status
        while len(self.last_progress) > _RECENT_COMMANDS:
            self.last_progress.pop(next(iter(self.last_progress)))
        self.hub.fleet.notify(self.siren_id)
        return None

    def fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.cancel()


def _tls_context(config: MqttBrokerConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _drop_oldest_queue(stats: MqttStats, made: list[asyncio.Queue[mqtt_client.Message]]
                       ) -> type[asyncio.Queue[mqtt_client.Message]]:
    """aiomqtt's inbound queue, bounded: when full the oldest message goes (counted), since
    the newest report of a siren is worth more than an old one. The instance aiomqtt makes is
    handed back through `made`, so the hub can drain it in batches."""

    class DropOldestQueue(asyncio.Queue[mqtt_client.Message]):
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize)
            made.append(self)

        def put_nowait(self, item: mqtt_client.Message) -> None:
            if self.full():
                self.get_nowait()
                stats.dropped_queue_full += 1
            super().put_nowait(item)

    return DropOldestQueue


class MqttHub:
    def __init__(self, config: MqttBrokerConfig, fleet: Fleet,
                 sirens: list[tuple[SirenConfig, MqttProfile]],
                 owns: Callable[[str], bool] | None = None, node_id: str | None = None
                 ) -> None:
        self.config = config
        self.fleet = fleet
        # In a cluster every node hears every message; only the siren's owner acts on it.
        self._owns = owns
        self.not_owned = 0
        self.stats = MqttStats()
        self.links: dict[str, MqttSirenLink] = {}
        # Every topic we handle, to its link and kind: one dict lookup per message.
        self._routes: dict[str, tuple[MqttSirenLink, str]] = {}
        subscriptions: set[str] = set()
        prefix = config.topic_prefix
        for siren, profile in sirens:
            assert isinstance(siren.link, MqttLink)
            link = MqttSirenLink(self, siren, siren.link.device_id or siren.id, profile)
            self.links[siren.id] = link
            self._routes[link.telemetry_topic] = (link, "telemetry")
            self._routes[link.state_topic] = (link, "state")
            self._routes[link.ack_topic] = (link, "ack")
            topics = profile.spec.topics
            subscriptions.update(f"{prefix}/+/{suffix}"
                                 for suffix in (topics.telemetry, topics.state, topics.ack))
        self.subscriptions = sorted(subscriptions)
        self._prefix = prefix + "/"
        self.client_id = config.client_id or f"siren-gw-{os.getpid() % 100000}-{random.randrange(16**6):06x}"
        if node_id is not None and config.client_id:  # one session per node, or they evict each other
            self.client_id = f"{config.client_id}-{node_id}"[:64]
        self._tls = _tls_context(config)
        self._client: mqtt_client.MqttClient | None = None
        self._connected = asyncio.Event()
        self._window = asyncio.Semaphore(config.publish_window)
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._warn = RateLimitedLog(log)

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._run(), name="mqtt hub")

    async def stop(self) -> None:
        self._running = False
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        for link in self.links.values():
            link.fail_pending()

    async def wait_connected(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        config = self.config
        backoff = config.reconnect_initial_s
        while self._running:
            made: list[asyncio.Queue[mqtt_client.Message]] = []
            try:
                async with mqtt_client.MqttClient(
                    config.host, config.port, username=config.username, password=config.password,
                    identifier=self.client_id, clean_session=True, keepalive=config.keepalive_s,
                    tls_context=self._tls, timeout=config.connect_timeout_s,
                    queue_type=_drop_oldest_queue(self.stats, made),
                    max_queued_incoming_messages=config.max_queued_messages,
                    logger=logging.getLogger("siren_gateway.links.mqtt.client"),
                ) as client:
                    # A command to every MQTT siren has one QoS 1 publish per siren awaiting
                    # its PUBACK at once, which is expected; aiomqtt logs a warning for every
                    # publish beyond 10 in flight (1,269 lines in one soak's first minutes).
                    client.pending_calls_threshold = len(self.links) + 100
                    await client.subscribe([(topic, 1) for topic in self.subscriptions])
                    self._client = client
                    self._connected.set()
                    self.stats.connected = True
                    self.stats.connects += 1
                    backoff = config.reconnect_initial_s
                    log.info("MQTT connected to %s:%d as %s, %d subscriptions", config.host,
                             config.port, self.client_id, len(self.subscriptions))
                    queue = made[-1]
                    handle = self._handle
                    async for message in client.messages:
                        handle(message.topic.value, message.payload)
                        # What else has arrived is handled in the same turn: aiomqtt's iterator
                        # costs a task per message, under load more than the handling itself.
                        for _ in range(min(queue.qsize(), 1000)):
                            queued = queue.get_nowait()
                            handle(queued.topic.value, queued.payload)
            except mqtt_client.MqttError as exc:
                self.stats.last_error = str(exc)
                if self.stats.connected:
                    self.stats.connection_losses += 1
                    log.warning("MQTT connection lost: %s", exc)
                else:
                    self._warn.warn("connect_failed",
                                    f"MQTT connect_failed: {config.host}:{config.port}: {exc}")
            finally:
                self._client = None
                self._connected.clear()
                self.stats.connected = False
            if not self._running:
                return
            # Jitter: a fleet of gateways (or our own restart loop) must not hammer in step.
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, config.reconnect_max_s)

    def _handle(self, topic: str, payload: Any) -> None:
        stats = self.stats
        stats.messages += 1
        route = self._routes.get(topic)
        if route is None:
            reason = "unknown_siren" if topic.startswith(self._prefix) else "unknown_topic"
            stats.reject(reason)
            self._warn.warn(reason, f"MQTT {reason}: ignored a message on {topic[:120]!r}")
            return
        link, kind = route
        if self._owns is not None and not self._owns(link.siren_id):
            self.not_owned += 1
            return
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode()
        try:
            if kind == "telemetry":
                sample = link.on_telemetry(payload, time.time())
                stats.telemetry += 1
                self.fleet.record_sample(sample)
                link.on_sample(sample)
            elif kind == "ack":
                stats.acks += 1
                ack = link.profile.decode_ack(payload)
                problem = link.on_ack(ack)
                if problem is not None:
                    raise PayloadError(problem, f"ack {ack.status!r} for command {ack.command_id}")
            else:
                stats.state_messages += 1
                if len(payload) > 64:
                    raise PayloadError("oversized", f"{len(payload)} bytes on a state topic")
                link.device_state = link.profile.decode_state(payload)
                if link.device_state == "offline":
                    self.fleet.mark_offline(link.siren_id,
                                            "device reported offline (or its last will)")
        except PayloadError as exc:
            stats.reject(exc.reason)
            self._warn.warn(exc.reason, f"MQTT {exc.reason}: {link.siren_id} on {topic}: "
                            f"{exc.detail}")
        except Exception as exc:  # a surprise in one message must not end everyone's telemetry
            stats.reject("internal")
            log.exception("MQTT message on %s could not be handled", topic)
            stats.last_error = repr(exc)

    async def publish(self, topic: str, payload: bytes, deadline: float) -> None:
        """Publish at QoS 1 by `deadline` (loop time), waiting out a broker outage meanwhile."""
        loop = asyncio.get_running_loop()
        reached_broker = False
        async with self._window:
            while True:
                client = self._client
                if client is None:
                    try:
                        async with asyncio.timeout_at(deadline):
                            await self._connected.wait()
                    except TimeoutError:
                        if reached_broker:
                            raise LinkError("unacknowledged", "connection lost while "
                                            "publishing; the broker may have the command") from None
                        raise LinkError("broker_unavailable",
                                        "not connected to the MQTT broker") from None
                    continue
                try:
                    reached_broker = True
                    async with asyncio.timeout_at(deadline):
                        await client.publish(topic, payload, qos=1)
                except mqtt_client.MqttError:
                    # The connection broke under us; the run loop reconnects. Publishing again
                    # is safe: the command id makes the device take it once.
                    if loop.time() >= deadline:
                        raise LinkError("unacknowledged", "connection lost while publishing; "
                                        "the broker may have the command") from None
                    await asyncio.sleep(0.05)
                    continue
                except TimeoutError:
                    raise LinkError("unacknowledged", "no PUBACK from the broker in time") from None
                self.stats.commands_published += 1
                return

    def health(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "broker": f"{self.config.host}:{self.config.port}",
            "client_id": self.client_id,
            "not_owned": self.not_owned,
            "connected": stats.connected,
            "connects": stats.connects,
            "connection_losses": stats.connection_losses,
            "messages": stats.messages,
            "telemetry": stats.telemetry,
            "acks": stats.acks,
            "state_messages": stats.state_messages,
            "rejected_by_reason": dict(stats.rejected_by_reason),
            "dropped_queue_full": stats.dropped_queue_full,
            "commands_published": stats.commands_published,
            "commands_unacknowledged": stats.commands_unacknowledged,
            "acks_inferred_from_telemetry": stats.acks_inferred_from_telemetry,
            "last_error": stats.last_error,
        }

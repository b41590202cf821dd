"""Simulated MQTT siren controllers: the same physics, presented through an MQTT profile.

Each simulated controller is its own MQTT client, as a cellular controller would be: it sets a
retained "online" state with a last will of "offline", reports telemetry periodically and on
every change, carries out commands from its command topic and acknowledges them (accepted or
rejected, then sounding and finished). MQTT faults are injected through the siren's CommsFaults:
a clean disconnect that leaves no will, an abrupt loss that fires the will, malformed JSON,
duplicate, late or missing acknowledgements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulators.physics import SimulatedSiren
from siren_gateway.config.links import MqttBrokerConfig
from siren_gateway.links import mqtt_client
from siren_gateway.model import Command, CommandKind
from siren_gateway.profiles.mqtt import MqttProfile, PayloadError

log = logging.getLogger(__name__)

# Change detection runs this often; an onset is reported within it.
TICK_S = 0.2
MALFORMED = b'{"ts": 1700000000, "state": "idle", "power": {"battery_v": 27.1'


@dataclass
class MqttSimStats:
    connects: int = 0
    telemetry: int = 0
    commands: int = 0
    acks: int = 0
    rejected_commands: int = 0


class SimulatedMqttSiren:
    def __init__(self, siren: SimulatedSiren, profile: MqttProfile, device_id: str,
                 broker: MqttBrokerConfig, interval_s: float,
                 clock: Callable[[], float]) -> None:
        self.siren = siren
        self.profile = profile
        self.device_id = device_id
        self.broker = broker
        self.interval_s = interval_s
        self.clock = clock
        topics = profile.topics(broker.topic_prefix, device_id)
        self.telemetry_topic, self.state_topic = topics.telemetry, topics.state
        self.command_topic, self.ack_topic = topics.command, topics.ack
        self.stats = MqttSimStats()
        self.connected = False
        self._answered: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (status, reason)
        self._progress: tuple[str, str] | None = None  # (command id, last stage reported)
        self._task: asyncio.Task[None] | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mqtt sim {self.device_id}")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._ack_tasks] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        comms = self.siren.comms
        await asyncio.sleep(random.uniform(0, min(self.interval_s, 2.0)))
        while True:
            if comms.silent_disconnect or comms.vanish:
                await asyncio.sleep(TICK_S)
                continue
            try:
                await self._session()
            except* mqtt_client.MqttError as lost:
                log.debug("%s: %s", self.device_id, lost.exceptions[0])
            self.connected = False
            await asyncio.sleep(random.uniform(0.3, 1.0))

    async def _session(self) -> None:
        broker = self.broker
        will = mqtt_client.Will(self.state_topic, b"offline", qos=1, retain=True)
        async with mqtt_client.MqttClient(
                broker.host, broker.port, username=broker.username, password=broker.password,
                identifier=f"sim-{self.device_id}", clean_session=True, will=will, keepalive=30,
                # A publish left hanging by a broker restart ends the session within 2 s
                # (then a reconnect and a fresh report), as a well-made controller does; with
                # 10 s its reports of an onset came after the gateway's confirmation window.
                timeout=2.0) as client:
            await client.subscribe(self.command_topic, qos=1)
            await client.publish(self.state_topic, b"online", qos=1, retain=True)
            self.connected = True
            self.stats.connects += 1
            # One task group: a publish failing in either half ends the session (and a
            # reconnect follows), where before a failed ack left a controller reporting on
            # but deaf to every command until the next broker restart.
            async with asyncio.TaskGroup() as session:
                commands = session.create_task(self._receive(client))
                await self._report(client)
                commands.cancel()
            if self.siren.comms.vanish:
                # Cut the TCP connection under the client: no DISCONNECT reaches the broker,
                # which therefore publishes our last will, as for a controller losing power.
                sock = client._client.socket()
                if isinstance(sock, socket.socket):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    async def _report(self, client: mqtt_client.MqttClient) -> None:
        """Telemetry every interval and at once on any change; returns when told to drop."""
        comms = self.siren.comms
        last_key: tuple[Any, ...] | None = None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not (comms.silent_disconnect or comms.vanish):
            now = self.clock()
            values = self.siren.status_values(now)
            key = (values["state"], values["last_command_sequence"], values["last_activation_result"],
                   values["sounding_current"] != 0, self.profile.faults(values))
            if key != last_key or loop.time() >= due:
                changed = last_key is not None and key != last_key
                last_key = key
                due = loop.time() + self.interval_s
                payload = (MALFORMED if comms.malformed_json
                           else self.profile.encode_telemetry(values, self.siren.device_time(now)))
                await client.publish(self.telemetry_topic, payload, qos=1 if changed else 0)
                self.stats.telemetry += 1
            await self._report_progress(client, values)
            await asyncio.sleep(TICK_S)

    async def _report_progress(self, client: mqtt_client.MqttClient, values: dict[str, Any]) -> None:
        if self._progress is None:
            return
        command_id, stage = self._progress
        if stage == "accepted" and values["state"] == "sounding" and values["sounding_current"] != 0:
            self._progress = (command_id, "sounding")
            await self._ack(client, command_id, "sounding", "")
        elif stage in ("accepted", "sounding") and values["state"] == "idle":
            result = values["last_activation_result"]
            status = "failed" if result == "failed" else "finished"
            self._progress = None
            await self._ack(client, command_id, status, str(result))

    async def _receive(self, client: mqtt_client.MqttClient) -> None:
        async for message in client.messages:
            if message.retain:
                continue  # a retained command is a stale one: never act on it
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await self._on_command(client, payload)

    async def _on_command(self, client: mqtt_client.MqttClient, payload: bytes) -> None:
        self.stats.commands += 1
        try:
            command, expires_at = self.profile.decode_command(payload)
        except PayloadError:
            self.stats.rejected_commands += 1
            return  # without an id there is nobody to answer
        answered = self._answered.get(command.command_id)
        if answered is not None:
            await self._ack(client, command.command_id, *answered)  # taken once, answered again
            return
        now = self.clock()
        if expires_at is not None and self.siren.device_time(now) > expires_at:
            status, reason = "rejected", "expired"
        elif self.siren.apply(command, now):
            status, reason = "accepted", ""
            late = (command.start_at is not None
                    and command.start_at.timestamp() < self.siren.device_time(now) - 0.5)
            if late:
                reason = "late start"  # started at once: its start time had passed
            if command.kind in (CommandKind.SOUND, CommandKind.SILENT_TEST):
                self._progress = (command.command_id, "accepted")
        else:
            status, reason = "rejected", _refusal(command)
        if status == "rejected":
            self.stats.rejected_commands += 1
        self._answered[command.command_id] = (status, reason)
        while len(self._answered) > 64:
            self._answered.popitem(last=False)
        await self._ack(client, command.command_id, status, reason)

    async def _ack(self, client: mqtt_client.MqttClient, command_id: str, status: str,
                   reason: str) -> None:
        comms = self.siren.comms
        if comms.never_ack or comms.lost_reply:
            return
        body = json.dumps({"id": command_id, "status": status, "reason": reason,
                           "ts": round(self.siren.device_time(self.clock()), 3)}).encode()
        copies = 2 if comms.duplicate_acks else 1
        if comms.late_acks_s > 0:
            task = asyncio.create_task(self._late(client, body, copies, comms.late_acks_s))
            self._ack_tasks.add(task)
            task.add_done_callback(self._ack_tasks.discard)
            return
        for _ in range(copies):
            await client.publish(self.ack_topic, body, qos=1)
            self.stats.acks += 1

    async def _late(self, client: mqtt_client.MqttClient, body: bytes, copies: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        with contextlib.suppress(mqtt_client.MqttError):
            for _ in range(copies):
                await client.publish(self.ack_topic, body, qos=1)
                self.stats.acks += 1


def _refusal(command: Command) -> str:
    if command.kind is CommandKind.SOUND:
        return f"unknown signal {command.signal!r}"
    return f"cannot {command.kind.value} now"

"""Alert notifiers: webhooks and an MQTT topic of the active alerts.

Each notifier reads alert changes from its own bounded bus queue and works at its own pace: a
dead webhook or broker loses (and counts) its own backlog, never slows the alert rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections import deque
from typing import Any

import aiomqtt
import httpx

from siren_gateway.bus import AlertChanged, Bus, ScheduleEvent, Subscription
from siren_gateway.config import SEVERITY_RANK, MqttNotifierConfig, WebhookConfig
from siren_gateway.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class WebhookNotifier:
    """POSTs each alert change as JSON; retries with exponential back-off, then gives up."""

    def __init__(self, bus: Bus, config: WebhookConfig) -> None:
        self.config = config
        self._subscription: Subscription = bus.subscribe(
            f"webhook {config.url}", maxsize=10_000, kinds=(AlertChanged,))
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.retries = 0
        self.filtered = 0

    def wants(self, alert: dict[str, Any]) -> bool:
        if SEVERITY_RANK[alert["severity"]] < SEVERITY_RANK[self.config.min_severity]:
            return False
        return not self.config.zones or bool(set(self.config.zones) & set(alert["zones"]))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"webhook {self.config.url}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        self._subscription.close()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.config.timeout_s) as http:
            while True:
                event = await self._subscription.get()
                if not isinstance(event, AlertChanged):
                    continue
                if not self.wants(event.alert):
                    self.filtered += 1
                    continue
                await self._post(http, {"change": event.change, "alert": event.alert})

    async def _post(self, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        delay = self.config.retry_initial_s
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                response = await http.post(self.config.url, json=body)
                if response.status_code < 300:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.config.max_attempts:
                break
            self.retries += 1
            log.warning("webhook %s failed (%s), retry in %.1f s", self.config.url, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
        self.failed += 1
        log.error("webhook %s gave up on alert %s after %d attempts", self.config.url,
                  body["alert"]["id"], self.config.max_attempts)

    def stats(self) -> dict[str, Any]:
        return {"url": self.config.url, "delivered": self.delivered, "failed": self.failed,
                "retries": self.retries, "filtered": self.filtered,
                "dropped": self._subscription.dropped}


class MqttAlertNotifier:
    """Keeps a retained message with every alert that is not cleared, for other systems."""

    def __init__(self, bus: Bus, config: MqttNotifierConfig) -> None:
        self.config = config
        self._subscription: Subscription = bus.subscribe(
            "mqtt alerts", maxsize=10_000, kinds=(AlertChanged, ScheduleEvent))
        self._current: dict[int, dict[str, Any]] = {}
        # Schedule events waiting to go out, oldest dropped (counted) if the broker is away long.
        self._schedule_events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.schedule_events_dropped = 0
        self.schedule_events_published = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.connect_failures = 0

    def seed(self, alerts: list[dict[str, Any]]) -> None:
        """The alerts that are not cleared when the gateway starts (reloaded from disk)."""
        self._current = {a["id"]: a for a in alerts if a["state"] != "cleared"}

    def start(self) -> None:
        self._changed.set()  # publish the state we start with
        self._tasks = [asyncio.create_task(self._collect(), name="mqtt alerts collect"),
                       asyncio.create_task(self._publish_forever(), name="mqtt alerts publish")]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._subscription.close()

    async def _collect(self) -> None:
        while True:
            event = await self._subscription.get()
            if isinstance(event, ScheduleEvent):
                if len(self._schedule_events) == self._schedule_events.maxlen:
                    self.schedule_events_dropped += 1
                body = {k: v.isoformat() if hasattr(v, "isoformat") else v
                        for k, v in dataclasses.asdict(event).items()}
                body["zones"] = list(event.zones)
                self._schedule_events.append(body)
                self._changed.set()
            elif isinstance(event, AlertChanged):
                if event.alert["state"] == "cleared":
                    self._current.pop(event.alert["id"], None)
                else:
                    self._current[event.alert["id"]] = event.alert
                self._changed.set()

    async def _publish_forever(self) -> None:
        config = self.config
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                        config.host, port=config.port, username=config.username,
                        password=config.password,
                        tls_context=ssl.create_default_context() if config.tls else None,
                ) as client:
                    backoff = 0.5
                    while True:
                        await self._changed.wait()
                        self._changed.clear()
                        payload = json.dumps(sorted(self._current.values(),
                                                    key=lambda a: a["id"]), ensure_ascii=False)
                        # Retained: a system that subscribes later gets the current alerts.
                        await client.publish(config.topic, payload, qos=1, retain=True)
                        self.published += 1
                        while self._schedule_events:
                            body = self._schedule_events[0]
                            await client.publish(config.schedule_topic,
                                                 json.dumps(body, ensure_ascii=False), qos=1)
                            self._schedule_events.popleft()  # only once the broker has it
                            self.schedule_events_published += 1
            except aiomqtt.MqttError as exc:
                self.connect_failures += 1
                self._changed.set()  # publish again once reconnected
                log.warning("MQTT alert notifier: %s; reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def stats(self) -> dict[str, Any]:
        return {"topic": self.config.topic, "published": self.published,
                "active": len(self._current), "connect_failures": self.connect_failures,
                "schedule_events": {"published": self.schedule_events_published,
                                    "dropped": self._subscription.dropped
                                    + self.schedule_events_dropped},
                "dropped": self._subscription.dropped}

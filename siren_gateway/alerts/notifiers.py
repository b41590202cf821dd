"""Alert notifiers: webhooks and an MQTT topic of the active alerts.

Each notifier reads alert changes from its own bounded bus queue and works at its own pace: a
dead webhook or broker loses (and counts) its own backlog, never slows the alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from siren_gateway.alerts.outbox import Notification, Outbox
from siren_gateway.config.alerts import MqttNotifierConfig, WebhookConfig
from siren_gateway.config.common import SEVERITY_RANK
from siren_gateway.links import mqtt_client
from siren_gateway.live.bus import AlertChanged, Bus, ScheduleEvent, Subscription
from siren_gateway.runtime.tasks import cancel_and_wait

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


class _BusNotifier:
    """A notifier's lifecycle: its own bus subscription (a bounded queue, so a dead receiver
    never slows the rules) and the tasks that collect from it and send."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription
        self._tasks: list[asyncio.Task[None]] = []

    def _run(self, **workers: Coroutine[Any, Any, None]) -> None:
        self._tasks = [asyncio.create_task(work, name=name) for name, work in workers.items()]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._subscription.close()


class WebhookNotifier(_BusNotifier):
    """POSTs each alert change as JSON, through the durable outbox.

    A change is stored before the first attempt; the sender works through the outbox in order,
    retrying with exponential back-off, and gives up (counted) after `max_attempts`. A restart
    in the middle of the retries carries on from the outbox. Each POST carries the
    notification id (in the body and the `X-Siren-Notification-Id` header) for receivers to
    drop repeats."""

    def __init__(self, bus: Bus, config: WebhookConfig, outbox: Outbox) -> None:
        self.config = config
        self.outbox = outbox
        self.channel = f"webhook:{config.url}"
        super().__init__(bus.subscribe(f"webhook {redact_url(config.url)}", maxsize=10_000,
                                       kinds=(AlertChanged,)))
        self._wake = asyncio.Event()
        self.delivered = 0
        self.failed = 0
        self.retries = 0
        self.filtered = 0

    def wants(self, alert: dict[str, Any]) -> bool:
        if SEVERITY_RANK[alert["severity"]] < SEVERITY_RANK[self.config.min_severity]:
            return False
        return not self.config.zones or bool(set(self.config.zones) & set(alert["zones"]))

    async def start(self) -> None:
        self._wake.set()  # whatever the outbox holds from before a restart goes first
        self._run(**{"webhook collect": self._collect(), "webhook send": self._send_forever()})

    async def _collect(self) -> None:
        while True:
            event = await self._subscription.get()
            if not isinstance(event, AlertChanged):
                continue
            if not self.wants(event.alert):
                self.filtered += 1
                continue
            alert = event.alert
            await self.outbox.put(self.channel, {"change": event.change, "alert": alert},
                                  key=f"alert {alert['id']} {alert['rule']} "
                                  f"{alert.get('siren_id') or alert.get('subject')} {event.change}")
            self._wake.set()

    async def _send_forever(self) -> None:
        # Imported by sites that post webhooks only: with its optional command-line extras
        # installed, httpx brings rich and pygments too (~6 MiB resident).
        import httpx

        async with httpx.AsyncClient(timeout=self.config.timeout_s) as http:
            while True:
                notification, next_at = await self.outbox.next_due(self.channel)
                if notification is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.05, next_at - time.time())):
                            await self._wake.wait()
                    continue
                await self._attempt(http, notification)

    async def _attempt(self, http: httpx.AsyncClient, notification: Notification) -> None:
        from httpx import HTTPError

        config = self.config
        try:
            response = await http.post(config.url, json=notification.body,
                                       headers={"X-Siren-Notification-Id": notification.id})
            if response.status_code < 300:
                self.delivered += 1
                await self.outbox.delivered(notification)
                return
            problem = f"HTTP {response.status_code}"
        except HTTPError as exc:
            problem = type(exc).__name__
        attempt = notification.attempts + 1
        if attempt >= config.max_attempts:
            self.failed += 1
            log.error("webhook %s gave up on notification %s after %d attempts (%s)",
                      redact_url(config.url), notification.id, attempt, problem)
            await self.outbox.give_up(notification)
            return
        delay = min(config.retry_initial_s * 2 ** (attempt - 1), 300.0)
        self.retries += 1
        log.warning("webhook %s failed (%s), retry in %.1f s", redact_url(config.url), problem,
                    delay)
        await self.outbox.retry(notification, delay)

    def stats(self) -> dict[str, Any]:
        return {"url": redact_url(self.config.url), "delivered": self.delivered,
                "failed": self.failed, "retries": self.retries, "filtered": self.filtered,
                "dropped": self._subscription.dropped}


def redact_url(url: str) -> str:
    """A URL fit to show: no user or password, no query string (webhook tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "?…" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, "", "")) + query


class MqttAlertNotifier(_BusNotifier):
    """Keeps a retained message with every alert that is not cleared, for other systems."""

    CHANNEL = "mqtt:schedule"

    def __init__(self, bus: Bus, config: MqttNotifierConfig, outbox: Outbox,
                 current_alerts: Callable[[], list[dict[str, Any]]]) -> None:
        self.config = config
        self.outbox = outbox
        self._current_alerts = current_alerts  # read at start: the alerts reloaded from disk
        super().__init__(bus.subscribe("mqtt alerts", maxsize=10_000,
                                       kinds=(AlertChanged, ScheduleEvent)))
        self._current: dict[int, dict[str, Any]] = {}
        # Schedule events go through the durable outbox: one message each, with its id.
        self.schedule_events_published = 0
        self._changed = asyncio.Event()
        self.published = 0
        self.connect_failures = 0

    async def start(self) -> None:
        self._current = {a["id"]: a for a in self._current_alerts() if a["state"] != "cleared"}
        self._changed.set()  # publish the state we start with
        self._run(**{"mqtt alerts collect": self._collect(),
                     "mqtt alerts publish": self._publish_forever()})

    async def _collect(self) -> None:
        while True:
            event = await self._subscription.get()
            if isinstance(event, ScheduleEvent):
                body = {k: v.isoformat() if hasattr(v, "isoformat") else v
                        for k, v in dataclasses.asdict(event).items()}
                body["zones"] = list(event.zones)
                await self.outbox.put(self.CHANNEL, body)
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
                async with mqtt_client.MqttClient(
                        config.host, port=config.port, username=config.username,
                        password=config.password,
                        tls_context=ssl.create_default_context() if config.tls else None,
                ) as client:
                    backoff = 0.5
                    while True:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):  # the outbox may hold retries
                                await self._changed.wait()
                        self._changed.clear()
                        payload = json.dumps(sorted(self._current.values(),
                                                    key=lambda a: a["id"]), ensure_ascii=False)
                        # Retained: a system that subscribes later gets the current alerts.
                        await client.publish(config.topic, payload, qos=1, retain=True)
                        self.published += 1
                        while True:
                            notification, _ = await self.outbox.next_due(self.CHANNEL)
                            if notification is None:
                                break
                            await client.publish(config.schedule_topic, json.dumps(
                                notification.body, ensure_ascii=False), qos=1)
                            await self.outbox.delivered(notification)  # once the broker has it
                            self.schedule_events_published += 1
            except mqtt_client.MqttError as exc:
                self.connect_failures += 1
                self._changed.set()  # publish again once reconnected
                log.warning("MQTT alert notifier: %s; reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def stats(self) -> dict[str, Any]:
        return {"topic": self.config.topic, "published": self.published,
                "active": len(self._current), "connect_failures": self.connect_failures,
                "schedule_events": {"published": self.schedule_events_published},
                "dropped": self._subscription.dropped}

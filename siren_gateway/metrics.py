"""Prometheus exposition through prometheus_client: the gateway's state read at scrape time (a
collector), histograms observed on the hot paths, and the library's process metrics (CPU,
memory, descriptors). One registry per gateway, so several can run in one process (tests).

prometheus_client's Histogram costs 0.77 µs an observation here (a lock per bucket and per
sum); the poll histogram, observed on every poll and only ever on the loop's thread, is a plain
count list instead (0.15 µs), exposed through the same library at scrape time.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from siren_gateway.model import LinkError
from siren_gateway.runtime.process_stats import task_count

if TYPE_CHECKING:
    from siren_gateway.gateway import Gateway

# A poll is a few ms on a LAN and up to the timeout (1-3 s) over a radio or serial line.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A command waits for the device's reply (Modbus) or its acknowledgement (MQTT).
COMMAND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LoopHistogram:
    """One histogram series observed from the event loop's thread only: no locks."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's buckets: (upper bound, observations at or below it)."""
        out, running = [], 0
        for bound, n in zip([*map(floatToGoString, self._bounds), "+Inf"], self.counts,
                            strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class _LoopHistograms(Collector):
    def __init__(self, name: str, documentation: str, label: str,
                 series: dict[str, LoopHistogram]) -> None:
        self._name, self._doc, self._label, self._series = name, documentation, label, series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        for value, series in self._series.items():
            family.add_metric([value], series.cumulative(), series.sum)
        yield family


class Instruments:
    """What the hot paths observe; created first, so every part can be given it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.poll_ok = LoopHistogram(POLL_BUCKETS)
        self.poll_failed = LoopHistogram(POLL_BUCKETS)
        self.registry.register(_LoopHistograms(
            "siren_gateway_poll_seconds", "Time a poll (read of a siren's status) took, by "
            "outcome.", "outcome", {"ok": self.poll_ok, "failed": self.poll_failed}))
        self.command_round_trip = Histogram(
            "siren_gateway_command_round_trip_seconds", "From sending a command to the "
            "device's reply or acknowledgement, by command kind and outcome.",
            ["kind", "outcome"], buckets=COMMAND_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)

    @contextmanager
    def command(self, kind: str) -> Iterator[None]:
        """Time one command exchange; its outcome is the link error's reason, if any."""
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except LinkError as exc:
            outcome = exc.reason
            raise
        except BaseException:
            outcome = "interrupted"
            raise
        finally:
            self.command_round_trip.labels(kind, outcome).observe(time.monotonic() - started)

    def expose(self) -> bytes:
        return generate_latest(self.registry)


class GatewayCollector(Collector):
    """Figures read from the gateway's state when scraped: nothing to keep up to date."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # families vary with the site (MQTT, Influx, coverage): none announced

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        states = gateway.fleet.states.values()
        polls = CounterMetricFamily("siren_gateway_polls", "Polls (and MQTT reports) by outcome.",
                                    labels=["outcome"])
        polls.add_metric(["ok"], sum(s.polls_ok for s in states))
        polls.add_metric(["failed"], sum(s.polls_failed for s in states))
        yield polls
        counts = gateway.fleet.counts()
        sirens = GaugeMetricFamily("siren_gateway_sirens", "Sirens by reachability.",
                                   labels=["reachability"])
        for reachability, n in counts.items():
            if reachability != "with_faults":
                sirens.add_metric([reachability], n)
        yield sirens
        yield GaugeMetricFamily("siren_gateway_sirens_with_faults",
                                "Sirens reporting at least one fault.", counts["with_faults"])
        dropped = CounterMetricFamily("siren_gateway_bus_dropped",
                                      "Events a slow subscriber lost (oldest first).",
                                      labels=["subscriber"])
        for name, stats in gateway.bus.stats().items():
            dropped.add_metric([name], stats["dropped"])
        yield dropped
        by_state: dict[str, int] = {}
        for activation in gateway.activations.activations.values():
            by_state[activation.state] = by_state.get(activation.state, 0) + 1
        activations = GaugeMetricFamily("siren_gateway_activations",
                                        "Activations held in memory, by state.", labels=["state"])
        for state, n in sorted(by_state.items()):
            activations.add_metric([state], n)
        yield activations
        alerts = gateway.alerts.alerts.values()
        yield GaugeMetricFamily("siren_gateway_alerts_active", "Alerts not cleared.",
                                sum(a.state != "cleared" for a in alerts))
        yield GaugeMetricFamily("siren_gateway_alerts_in_memory",
                                "Alerts held in memory (any state).", len(gateway.alerts.alerts))
        coverage = gateway.coverage.metrics()
        if coverage:
            ratio = GaugeMetricFamily(
                "siren_gateway_coverage_ratio", "Share of a zone's area that would hear the "
                "alarm from the sirens able to sound.", labels=["zone"])
            for labels, value in coverage:
                ratio.add_metric([labels["zone"]], value)
            yield ratio
        if gateway.influx is not None:
            sink = gateway.influx.stats()
            yield GaugeMetricFamily("siren_gateway_sink_spool_bytes", "Telemetry spooled on disk.",
                                    sink["spool"]["bytes"])
            lines = CounterMetricFamily("siren_gateway_sink_lines", "Telemetry lines by outcome.",
                                        labels=["outcome"])
            lines.add_metric(["written"], sink["written_lines"])
            lines.add_metric(["rejected"], sink["rejected_lines"])
            lines.add_metric(["dropped"], sink["spool"]["dropped_lines"])
            yield lines
        if gateway.mqtt is not None:
            mqtt = gateway.mqtt.stats
            yield GaugeMetricFamily("siren_gateway_mqtt_connected",
                                    "1 while connected to the broker.", int(mqtt.connected))
            yield CounterMetricFamily("siren_gateway_mqtt_messages", "MQTT messages received.",
                                      mqtt.messages)
            rejected = CounterMetricFamily("siren_gateway_mqtt_rejected",
                                           "MQTT messages refused, by reason.", labels=["reason"])
            for reason, n in sorted(mqtt.rejected_by_reason.items()):
                rejected.add_metric([reason], n)
            yield rejected
            yield CounterMetricFamily("siren_gateway_mqtt_dropped", "MQTT messages dropped "
                                      "because the gateway fell behind.", mqtt.dropped_queue_full)
        # Read on the loop's thread (the scrape runs there): the loop's own tasks.
        yield GaugeMetricFamily("siren_gateway_asyncio_tasks", "Unfinished asyncio tasks.",
                                task_count())

"""Prometheus metrics (text exposition format) and the site's description for the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from siren_gateway.api.deps import GatewayDep, Viewer
from siren_gateway.gateway import Gateway
from siren_gateway.runtime.process_stats import open_descriptors, resident_bytes, task_count

router = APIRouter(tags=["metrics"])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(gateway: Gateway) -> str:
    """Written by hand: a dozen families do not need a client library on the hot path."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    states = gateway.fleet.states.values()
    family("siren_gateway_polls_total", "counter", "Polls (and MQTT reports) by outcome.",
           [({"outcome": "ok"}, sum(s.polls_ok for s in states)),
            ({"outcome": "failed"}, sum(s.polls_failed for s in states))])
    counts = gateway.fleet.counts()
    family("siren_gateway_sirens", "gauge", "Sirens by reachability.",
           [({"reachability": r}, n) for r, n in counts.items() if r != "with_faults"])
    family("siren_gateway_sirens_with_faults", "gauge", "Sirens reporting at least one fault.",
           [({}, counts["with_faults"])])
    family("siren_gateway_bus_dropped_total", "counter",
           "Events a slow subscriber lost (oldest first).",
           [({"subscriber": name}, v["dropped"]) for name, v in gateway.bus.stats().items()])
    by_state: dict[str, int] = {}
    for activation in gateway.activations.activations.values():
        by_state[activation.state] = by_state.get(activation.state, 0) + 1
    family("siren_gateway_activations", "gauge", "Activations held in memory, by state.",
           [({"state": k}, v) for k, v in sorted(by_state.items())])
    family("siren_gateway_alerts_active", "gauge", "Alerts not cleared.",
           [({}, sum(a.state != "cleared" for a in gateway.alerts.alerts.values()))])
    coverage = gateway.coverage.metrics()
    if coverage:
        family("siren_gateway_coverage_ratio", "gauge",
               "Share of a zone's area that would hear the alarm from the sirens able to sound.",
               coverage)
    if gateway.influx is not None:
        sink = gateway.influx.stats()
        family("siren_gateway_sink_spool_bytes", "gauge", "Telemetry spooled on disk.",
               [({}, sink["spool"]["bytes"])])
        family("siren_gateway_sink_lines_total", "counter", "Telemetry lines by outcome.",
               [({"outcome": "written"}, sink["written_lines"]),
                ({"outcome": "rejected"}, sink["rejected_lines"]),
                ({"outcome": "dropped"}, sink["spool"]["dropped_lines"])])
    if gateway.mqtt is not None:
        stats = gateway.mqtt.stats
        family("siren_gateway_mqtt_connected", "gauge", "1 while connected to the broker.",
               [({}, 1.0 if stats.connected else 0.0)])
        family("siren_gateway_mqtt_messages_total", "counter", "MQTT messages received.",
               [({}, stats.messages)])
        family("siren_gateway_mqtt_rejected_total", "counter", "MQTT messages refused, by reason.",
               [({"reason": r}, n) for r, n in sorted(stats.rejected_by_reason.items())])
        family("siren_gateway_mqtt_dropped_total", "counter",
               "MQTT messages dropped because the gateway fell behind.",
               [({}, stats.dropped_queue_full)])
    family("siren_gateway_process_resident_bytes", "gauge", "Resident memory of the process.",
           [({}, resident_bytes())])
    descriptors = open_descriptors()
    if descriptors is not None:
        family("siren_gateway_process_open_fds", "gauge", "Open file descriptors.",
               [({}, descriptors)])
    family("siren_gateway_asyncio_tasks", "gauge", "Unfinished asyncio tasks.",
           [({}, task_count())])
    family("siren_gateway_alerts_in_memory", "gauge", "Alerts held in memory (any state).",
           [({}, len(gateway.alerts.alerts))])
    return "\n".join(out) + "\n"


@router.get("/metrics", include_in_schema=False)
async def metrics(gateway: GatewayDep) -> Response:
    # On the loop (not the thread pool): the task count is the loop's own.
    return Response(render_metrics(gateway), media_type="text/plain; version=0.0.4")


@router.get("/api/site")
def site(gateway: GatewayDep, _: Viewer) -> dict[str, Any]:
    info = gateway.site.config.site
    return {"name": info.name, "name_zh": info.name_zh, "timezone": info.timezone,
            "zones": [z.model_dump() for z in gateway.site.config.zones]}

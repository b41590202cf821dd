"""Prometheus metrics and structured logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx

from siren_gateway.api.app import create_app
from siren_gateway.metrics import Instruments
from siren_gateway.runtime.logs import JsonFormatter
from tests.test_schedule_api import make_gateway


async def test_metrics_and_site_description(tmp_path: Path) -> None:
    gateway = await make_gateway(tmp_path)
    try:
        transport = httpx.ASGITransport(app=create_app(gateway, manage_lifecycle=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            for family in ("siren_gateway_polls_total", "siren_gateway_sirens",
                           "siren_gateway_bus_dropped_total", "siren_gateway_activations",
                           "siren_gateway_alerts_active"):
                assert f"# TYPE {family} " in text
            assert 'siren_gateway_sirens{reachability="unknown"} 3.0' in text
            figures = dict(line.rsplit(" ", 1) for line in text.splitlines()
                           if line and not line.startswith("#"))
            # The library's process metrics, and the histograms of the hot paths.
            assert float(figures["process_resident_memory_bytes"]) > 10e6
            assert float(figures["process_open_fds"]) >= 3
            assert "process_cpu_seconds_total" in figures
            assert float(figures["siren_gateway_asyncio_tasks"]) >= 2  # the request and more
            assert "# TYPE siren_gateway_poll_seconds histogram" in text
            assert "# TYPE siren_gateway_command_round_trip_seconds histogram" in text
            # The site description is for logged-in users only.
            assert (await http.get("/api/site")).status_code == 401
            page = await http.get("/")
            assert page.status_code == 200 and "/dashboard/app.js" in page.text
            assert (await http.get("/dashboard/i18n.js")).status_code == 200
    finally:
        await gateway.stop()


def test_json_logs_are_one_object_per_line() -> None:
    record = logging.LogRecord("siren_gateway.links.mqtt", logging.WARNING, __file__, 1,
                               "MQTT %s: %s", ("wrong_type", "s1 on t: 状态"), None)
    line = JsonFormatter().format(record)
    body = json.loads(line)
    assert body["level"] == "WARNING" and body["logger"] == "siren_gateway.links.mqtt"
    assert body["message"] == "MQTT wrong_type: s1 on t: 状态" and "time" in body


def test_the_poll_histogram_counts_like_prometheus() -> None:
    """The lock-free poll histogram: a value on a bound counts in that bucket (le), buckets
    are cumulative, +Inf holds everything, and the library exposes it as a histogram."""
    instruments = Instruments()
    for seconds in (0.005, 0.0051, 0.3, 99.0):
        instruments.poll_ok.observe(seconds)
    instruments.poll_failed.observe(2.0)
    text = instruments.expose().decode()
    figures = dict(line.rsplit(" ", 1) for line in text.splitlines()
                   if line and not line.startswith("#"))
    ok = 'siren_gateway_poll_seconds_bucket{le="%s",outcome="ok"}'
    assert float(figures[ok % "0.005"]) == 1
    assert float(figures[ok % "0.01"]) == 2
    assert float(figures[ok % "0.5"]) == 3
    assert float(figures[ok % "10.0"]) == 3
    assert float(figures[ok % "+Inf"]) == 4
    assert float(figures['siren_gateway_poll_seconds_count{outcome="ok"}']) == 4
    assert abs(float(figures['siren_gateway_poll_seconds_sum{outcome="ok"}']) - 99.3101) < 1e-9
    assert float(figures['siren_gateway_poll_seconds_count{outcome="failed"}']) == 1

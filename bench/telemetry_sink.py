"""Telemetry sink throughput into a real VictoriaMetrics, against two baselines.

    python -m bench.telemetry_sink --samples 200000

1. sink:  samples published on the bus, through InfluxSink (line protocol, batching, the
          influxdb-client adapter) until VictoriaMetrics has acknowledged every one;
2. bare:  the same line protocol prepared beforehand, POSTed in the same batch size with
          aiohttp (the physical limit of this server on this machine);
3. naive: one influxdb-client Point per sample, written with its async API in the same batches.

Samples are full controller status sets (about 30 points each) from the simulator's physics.
Reports samples/s, CPU seconds per 10,000 samples (this process), and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from influxdb_client.domain.write_precision import WritePrecision

from simulators.physics import SimulatedSiren
from simulators.sitegen import free_ports, generate_site, write_site
from siren_gateway.config.loading import load_site
from siren_gateway.config.site import Site
from siren_gateway.config.telemetry import InfluxConfig
from siren_gateway.live.bus import Bus, SampleReceived
from siren_gateway.model import Sample, Value
from siren_gateway.telemetry.lineprotocol import LineEncoder
from siren_gateway.telemetry.sink import InfluxSink

MILLISECONDS: Any = WritePrecision.MS  # the library's hints want the class, its values are str


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_samples(site: Site, count: int) -> list[Sample]:
    t0 = datetime(2026, 9, 18, 2, 0, tzinfo=UTC)
    sirens = [SimulatedSiren(s.id, site.signals, t0.timestamp()) for s in site.config.sirens]
    samples = []
    for i in range(count):
        siren = sirens[i % len(sirens)]
        at = t0 + timedelta(milliseconds=i)
        values: dict[str, Value] = {k: v for k, v in siren.status_values(at.timestamp()).items()
                  if not isinstance(v, str)}  # VictoriaMetrics keeps numbers only
        samples.append(Sample(siren.siren_id, at, values))
    return samples


def start_victoria(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise SystemExit("victoria-metrics is not installed (apt-get install victoria-metrics)")
    port = free_ports(1)[0]
    process = subprocess.Popen([binary, f"-storageDataPath={data}", "-loggerLevel=ERROR",
                                f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/health", timeout=1).text.strip() == "OK":
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("victoria-metrics did not start")


async def via_sink(site: Site, url: str, samples: list[Sample], batch: int, spool: Path
                   ) -> tuple[float, float]:
    config = InfluxConfig(url=url, batch_size=batch, flush_interval_s=0.2, string_fields=False,
                          queue_size=len(samples) + 1000)
    bus = Bus()
    sink = InfluxSink(site.config.sirens, bus, config, spool)
    await sink.start()
    c0, t0 = cpu(), time.perf_counter()
    for s in samples:
        bus.publish(SampleReceived(s))
    while sink.written_lines < len(samples):
        if sink.rejected_lines or sink.spool.lines:
            raise RuntimeError(f"sink did not write cleanly: {sink.stats()}")
        await asyncio.sleep(0.005)
    wall, used = time.perf_counter() - t0, cpu() - c0
    await sink.stop()
    return wall, used


async def bare_post(url: str, lines: list[str], batch: int) -> tuple[float, float]:
    bodies = ["\n".join(lines[i:i + batch]) for i in range(0, len(lines), batch)]
    async with aiohttp.ClientSession() as session:
        c0, t0 = cpu(), time.perf_counter()
        for body in bodies:
            async with session.post(f"{url}/api/v2/write?precision=ms", data=body) as response:
                if response.status != 204:
                    raise RuntimeError(f"HTTP {response.status}")
        return time.perf_counter() - t0, cpu() - c0


async def naive_points(url: str, site: Site, samples: list[Sample], batch: int
                       ) -> tuple[float, float]:
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.client.write.point import Point

    zones = {s.id: s.zones[0] for s in site.config.sirens}
    async with InfluxDBClientAsync(url=url, token="", org="bench") as client:
        api = client.write_api()
        c0, t0 = cpu(), time.perf_counter()
        for start in range(0, len(samples), batch):
            points = [to_point(Point, s, zones) for s in samples[start:start + batch]]
            await api.write(bucket="bench", record=points, write_precision=MILLISECONDS)
        return time.perf_counter() - t0, cpu() - c0


def to_point(point_class: Any, s: Sample, zones: dict[str, str]) -> Any:
    """One influxdb-client Point per sample, the way the client's documentation builds them."""
    point = (point_class("siren_status").tag("siren_id", s.siren_id)
             .tag("zone", zones[s.siren_id]).tag("model", "generic_siren_controller"))
    for name, value in s.values.items():
        point = point.field(name, value)
    return point.field("fault_count", len(s.faults)).time(s.received_at,
                                                          write_precision=MILLISECONDS)


async def one_write_per_point(url: str, site: Site, samples: list[Sample]
                              ) -> tuple[float, float]:
    """The literal naive integration: build a Point and await a write for every sample."""
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.client.write.point import Point

    zones = {s.id: s.zones[0] for s in site.config.sirens}
    async with InfluxDBClientAsync(url=url, token="", org="bench") as client:
        api = client.write_api()
        c0, t0 = cpu(), time.perf_counter()
        for s in samples:
            await api.write(bucket="bench", record=to_point(Point, s, zones),
                            write_precision=MILLISECONDS)
        return time.perf_counter() - t0, cpu() - c0


def line(name: str, count: int, result: tuple[float, float]) -> str:
    wall, used = result
    return (f"  {name:<6} {count / wall:10.0f} samples/s   {wall:6.2f} s wall   "
            f"{10_000 * used / count:6.3f} CPU-s per 10,000 samples")


async def run(count: int, batch: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    site = load_site(write_site(generate_site(1000), work / "site.yaml"))
    samples = make_samples(site, count)
    encoder = LineEncoder(site.config.sirens, string_fields=False)
    t0 = time.perf_counter()
    lines = [encoder.encode(s) or "" for s in samples]
    encode_s = time.perf_counter() - t0
    print(f"{count} samples of {len(samples[0].values)} points, batches of {batch}; "
          f"our line protocol alone: {count / encode_s:.0f} samples/s")
    results: dict[str, tuple[float, float]] = {}
    for name in ("bare", "sink", "naive", "one-by-one"):  # each into a fresh server
        process, url = start_victoria(work / f"vm-{name}")
        try:
            if name == "bare":
                results[name] = await bare_post(url, lines, batch)
            elif name == "sink":
                results[name] = await via_sink(site, url, samples, batch, work / "spool")
            elif name == "naive":
                results[name] = await naive_points(url, site, samples, batch)
            else:  # a write per sample is slow: measure it on a slice
                part = samples[: min(len(samples), 5000)]
                wall, used = await one_write_per_point(url, site, part)
                results[name] = (wall * len(samples) / len(part), used * len(samples) / len(part))
        finally:
            process.terminate()
            process.wait(15)
        print(line(name, count, results[name]), flush=True)
    rate: dict[str, float] = {k: count / v[0] for k, v in results.items()}
    print(f"RATIO sink / bare POST: {rate['sink'] / rate['bare']:.2f}  (target >= 0.5)")
    print(f"RATIO sink / naive, one Point per sample, batched writes: "
          f"{rate['sink'] / rate['naive']:.1f}  (target >= 5)")
    print(f"RATIO sink / naive, one Point and one write per sample: "
          f"{rate['sink'] / rate['one-by-one']:.1f}  (target >= 5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    asyncio.run(run(args.samples, args.batch))


if __name__ == "__main__":
    main()

"""Our small adapter around influxdb-client's async write API.

influxdb-client neither batches nor retries in its async API; the sink does both. This adapter
only turns one write into one of three outcomes: written, rejected (a 4xx data error: retrying
cannot help) or deferred (5xx, 429, timeout, connection failure: try again later).
"""

from __future__ import annotations

import asyncio
from typing import Any

RETRYABLE_STATUS = frozenset({408, 429})
# WritePrecision.MS is this plain string; the library's type hints want the enum.
MILLISECONDS: Any = "ms"


class WriteRejected(Exception):
    """The server refused the data itself (4xx); the batch will never be accepted as it is."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class WriteDeferred(Exception):
    """The server could not take the data now; `retry_after_s` if it said when to come back."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off


class InfluxWriter:
    """Writes line protocol (milliseconds) to any server with the InfluxDB v2 write API."""

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float) -> None:
        # Imported here, not at the top: influxdb-client and aiohttp add ~20 MiB to the
        # process (measured by bench/memory.py), paid only by sites with a time-series server.
        import aiohttp
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
        from influxdb_client.rest import ApiException

        self._api_exception: type[ApiException] = ApiException
        self._transport_errors = (TimeoutError, aiohttp.ClientError, OSError)
        self.url, self.org, self.bucket = url, org, bucket
        self._client = InfluxDBClientAsync(url=url, token=token, org=org,
                                           timeout=int(timeout_s * 1000))
        self._api = self._client.write_api()
        self._timeout_s = timeout_s

    async def write(self, lines: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s + 1.0):
                await self._api.write(bucket=self.bucket, org=self.org, record=lines,
                                      write_precision=MILLISECONDS)
        except self._api_exception as exc:
            status = int(exc.status or 0)
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(
                exc.body or exc.reason or "")
            if 400 <= status < 500 and status not in RETRYABLE_STATUS:
                raise WriteRejected(status, body) from None
            raise WriteDeferred(f"HTTP {status}", _retry_after(exc.headers)) from None
        except self._transport_errors as exc:
            raise WriteDeferred(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

"""Logging set-up: readable lines for people, or one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


# token=..., access_token=..., password=..., Authorization: Bearer ..., bearer.<token>,
# user:password@ in URLs: whatever a log line carries, credentials leave it as "***".
_SECRETS = re.compile(
    r"(?i)((?:access_|confirmation_|refresh_)?token=|password=|secret=|key=)[^&\s\"']+"
    r"|(bearer[ .])[A-Za-z0-9._~+/=-]+"
    r"|(://[^/\s:@]+:)[^@\s/]+(@)")


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "***"
                        + (m.group(4) or ""), text)


class RedactingFilter(logging.Filter):
    """Credentials never reach a log line, whoever logs (uvicorn's access log included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(level: str, json_lines: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class RateLimitedLog:
    """At most `burst` lines per key per period, then one line with the count left out.

    A thousand sirens going offline together (a network cut) must cost a few log lines, not a
    thousand; the next line after the quiet period says how many were not written.
    """

    def __init__(self, logger: logging.Logger, period_s: float = 10.0, burst: int = 1) -> None:
        self.logger = logger
        self.period_s = period_s
        self.burst = burst
        self._window: dict[str, tuple[float, int]] = {}  # key -> (window start, lines in it)
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        start, count = self._window.get(key, (-1e18, 0))
        if now - start >= self.period_s:
            start, count = now, 0
        if count >= self.burst:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self._window[key] = (start, count)
            return
        self._window[key] = (start, count + 1)
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += f" ({skipped} similar lines not logged since the last)"
        self.logger.log(level, message, *args)

    def warn(self, key: str, message: str) -> None:
        self.log(logging.WARNING, key, "%s", message)

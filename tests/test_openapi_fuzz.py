"""schemathesis fuzzes the gateway's own OpenAPI document with an admin token.

Against a real `siren-gateway run` process in front of simulated sirens: every operation gets
generated requests, valid and not; no answer may be a server error, and every answer must be
one the document declares (status, content type, body schema). Bounded to run in about two
minutes (`SG_FUZZ_EXAMPLES` per operation).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from simulators.processes import start_site
from simulators.sitegen import generate_site
from tests.conftest import PASSWORDS, with_users

EXAMPLES = int(os.environ.get("SG_FUZZ_EXAMPLES", "100"))


class Target:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("fuzz")
    site: dict[str, Any] = with_users(generate_site(3, poll_interval_s=1.0, timeout_s=0.5))
    site["schedules"] = [{"id": "monthly", "name": "Monthly", "timezone": "Asia/Shanghai",
                          "recurrence": {"type": "monthly", "weekday": "wed", "nth": 1,
                                         "time": "10:00"},
                          "steps": [{"offset_s": 0, "signal": "growl_test"}]}]
    fleet, gateway = start_site(site, work)
    try:
        deadline = time.monotonic() + 30
        token = None
        while token is None:
            try:
                response = httpx.post(f"{gateway.url}/api/auth/token", data={
                    "username": "admin", "password": PASSWORDS["admin"]}, timeout=5)
                token = response.json()["access_token"]
            except (httpx.HTTPError, KeyError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield Target(gateway.url, token)
    finally:
        gateway.stop()
        fleet.stop()


def test_no_server_error_and_every_answer_as_documented(target: Target) -> None:
    loaded = schemathesis.openapi.from_url(f"{target.url}/openapi.json")
    # Logging out or revoking would end the fuzzer's own session.
    schema = loaded.exclude(path_regex=r"^/api/auth/(logout|revoke)$")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=target.url, headers=target.headers, checks=[
                checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance])

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all
            # failures are reported together
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations >= 25
    assert not failures, "\n\n".join(failures)

"""Every attack the security review made, replayed against a running gateway over real sockets.

The gateway is a real `siren-gateway run` process (its log is read too), in front of simulated
sirens; each test shows the attack now fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websockets
import websockets.exceptions  # not loaded by the package itself: some runs never import it
from websockets.typing import Subprotocol

from simulators.launcher import REPO_DIR
from simulators.processes import GatewayProcess
from simulators.sitegen import generate_site
from siren_gateway.security.auth import Principal, Role, TokenStore, hash_password, legacy_scrypt_hash
from tests.conftest import (
    PASSWORDS,
    SimulatedDistrict,
    StartDistrict,
    logged_in,
    wait_until,
    with_users,
)

HOOK_SECRET = "s3cr3t-hook-token-do-not-leak"
LOGIN = {"free_failures": 5, "base_delay_s": 0.2, "max_delay_s": 1.0, "lockout_after": 100_000,
         "alert_after": 20}


class Running:
    def __init__(self, district: SimulatedDistrict, gateway: GatewayProcess, log: Path) -> None:
        self.district, self.gateway, self.log = district, gateway, log

    async def token(self, user: str, password: str | None = None) -> str:
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=10) as http:
            response = await http.post("/api/auth/token", data={
                "username": user, "password": password or PASSWORDS[user]})
            response.raise_for_status()
            token: str = response.json()["access_token"]
            return token

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.gateway.url, timeout=10, headers=headers)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


async def start_gateway(start_district: StartDistrict, tmp_path: Path,
                        site: dict[str, Any] | None = None) -> Running:
    site = site or with_users(generate_site(2, poll_interval_s=1.0, timeout_s=0.5))
    site["alerts"] = {"webhooks": [{"url": f"http://127.0.0.1:9/hook?token={HOOK_SECRET}"}]}
    site["api"] = dict(site.get("api", {})) | {"login": LOGIN}
    district = start_district(site)
    log = tmp_path / "gateway.log"
    gateway = GatewayProcess(district.site_file, log_path=log)
    gateway.start()
    http = await logged_in(gateway, "viewer")
    await http.aclose()
    return Running(district, gateway, log)


@pytest.fixture
async def running(start_district: StartDistrict, tmp_path: Path) -> AsyncIterator[Running]:
    started = await start_gateway(start_district, tmp_path)
    yield started
    started.gateway.stop()


# -- limits at the edge ---------------------------------------------------------------------

async def _post_raw(port: int, head: bytes, body_chunks: int, chunk: bytes) -> tuple[bytes, int]:
    """Send a request head, then up to `body_chunks` chunks while reading the answer; stop
    writing when the server answers or hangs up. The answer and the bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = asyncio.create_task(reader.read(4096))
    writer.write(head)
    sent = 0
    try:
        for _ in range(body_chunks):
            if answered.done():
                break
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        pass  # the server hung up on us (reset or broken pipe): that is the point
    try:
        answer = await asyncio.wait_for(answered, 10)
    except (ConnectionError, TimeoutError):
        # A write that met the hang-up fails the pending read with the same error (a broken
        # pipe as well as a reset, whichever the kernel reports first).
        answer = b""
    writer.close()
    return answer, sent


async def test_a_huge_unauthenticated_body_is_refused_while_reading(running: Running) -> None:
    assert running.gateway.process is not None
    process = psutil.Process(running.gateway.process.pid)
    before = process.memory_info().rss
    port = running.gateway.port
    health_latencies: list[float] = []
    stop = asyncio.Event()

    async def watch_health() -> None:
        async with running.client() as http:
            while not stop.is_set():
                start = time.perf_counter()
                assert (await http.get("/api/health")).status_code == 200
                health_latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_health())
    hundred_mb = 100 * 2**20
    # Declared: refused at once, before a byte of the body is read.
    answer, _ = await _post_raw(port, (
        b"POST /api/activations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(hundred_mb).encode() + b"\r\n\r\n"), 0, b"")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Not declared (chunked): refused once the limit is passed, the rest never read.
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    answer, sent = await _post_raw(port, (
        b"POST /api/auth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"), hundred_mb // 0x10000, chunk)
    # The server answers 413 and hangs up with our unread bytes in its buffer, so its TCP
    # reset may reach us before we read the answer: either proves it stopped reading.
    assert answer.startswith(b"HTTP/1.1 413") or answer == b"", answer[:200]
    assert sent < hundred_mb  # the server stopped reading: we could not push it all
    stop.set()
    await watcher
    grown = process.memory_info().rss - before
    assert grown < 20 * 2**20, f"memory grew by {grown / 2**20:.1f} MB"
    assert health_latencies and max(health_latencies) < 1.0, max(health_latencies)


async def test_long_usernames_and_lists_are_refused_before_any_work(running: Running) -> None:
    async with running.client() as http:
        response = await http.post("/api/auth/token",
                                   data={"username": "u" * 900_000, "password": "x"})
        assert response.status_code in (413, 422)
        response = await http.post("/api/auth/token", data={"username": "u" * 300,
                                                            "password": "x"})
        assert response.status_code == 422
    token = await running.token("operator")
    async with running.client(token) as http:
        targets = {"sirens": [f"s{i:05d}" for i in range(60_000)]}
        response = await http.post("/api/activations", json={
            "targets": targets, "class": "test", "signal": "growl_test"})
        assert response.status_code in (413, 422)
        response = await http.post("/api/activations", json={
            "targets": {"sirens": ["x" * 100]}, "class": "test", "signal": "growl_test"})
        assert response.status_code == 422
        entries = (await http.get("/api/audit", params={"action": "auth.login"})).json()
    assert all(len(e["username"]) <= 64 for e in entries)
    assert any(e["outcome"] == "refused: malformed" for e in entries)


# -- password guessing ----------------------------------------------------------------------

async def test_password_guessing_is_throttled_and_alerts(running: Running) -> None:
    admin = await running.token("admin")  # before the attack: its address gets throttled too
    statuses: list[int] = []
    retry_after = 0
    async with running.client() as http:
        for _ in range(300):
            response = await http.post("/api/auth/token", data={"username": "operator",
                                                                "password": "guess"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after = int(response.headers["Retry-After"])
        assert statuses.count(429) > 250 and statuses[:5] == [401] * 5
        assert 1 <= retry_after <= 1
        # The right password is throttled too while the delay runs ...
        right = await http.post("/api/auth/token", data={"username": "operator",
                                                         "password": PASSWORDS["operator"]})
        assert right.status_code == 429 and right.headers["Retry-After"]
        # ... and goes through once it has passed.
        await asyncio.sleep(retry_after + 0.2)
        right = await http.post("/api/auth/token", data={"username": "operator",
                                                         "password": PASSWORDS["operator"]})
        assert right.status_code == 200, right.text
    async with running.client(admin) as http:
        failed = [e for e in (await http.get("/api/audit", params={
            "action": "auth.login", "limit": 200})).json() if e["outcome"].startswith("refused")]
        assert failed and all(e["source"] == "127.0.0.1" for e in failed)
        assert all(e["username"] == "operator" for e in failed)

        async def attack_alert() -> bool:
            alerts = (await http.get("/api/alerts")).json()
            return any(a["rule"] == "login_attack" and a["state"] == "active" for a in alerts)

        await wait_until(attack_alert, 5, "login_attack alert")


async def test_a_weak_hash_is_upgraded_at_login(start_district: StartDistrict,
                                                tmp_path: Path) -> None:
    site = with_users(generate_site(1, poll_interval_s=1.0, timeout_s=0.5))
    site["users"] = [dict(u) for u in site["users"]]
    site["users"][0]["password_hash"] = legacy_scrypt_hash(PASSWORDS["viewer"])
    started = await start_gateway(start_district, tmp_path, site)
    try:
        await started.token("viewer")
        db_path = Path(started.district.site().config.storage.path)
        rows = sqlite3.connect(db_path).execute(
            "SELECT password_hash FROM password_upgrades WHERE username = 'viewer'").fetchall()
        assert rows and rows[0][0].startswith("$argon2id$")
        await started.token("viewer")  # the upgraded hash verifies
    finally:
        started.gateway.stop()


# -- secrets, logs, headers -----------------------------------------------------------------

async def test_no_secret_without_authentication_and_none_in_the_log(running: Running) -> None:
    async with running.client() as http:
        for path in ("/api/health", "/metrics", "/openapi.json", "/", "/api/site"):
            response = await http.get(path)
            assert HOOK_SECRET not in response.text, path
        health = (await http.get("/api/health")).json()
        assert set(health) == {"status"}
    viewer = await running.token("viewer")
    async with running.client(viewer) as http:
        details = (await http.get("/api/health")).json()
        assert "sirens" in details
        assert HOOK_SECRET not in json.dumps(details)
        assert details["alerts"]["webhooks"][0]["url"].startswith("http://127.0.0.1:9/hook")
    # A stream opened the way the dashboard does, then a logout: the token is in no log line.
    async with websockets.connect(f"ws://127.0.0.1:{running.gateway.port}/api/stream",
                                  subprotocols=[Subprotocol("siren-gateway"),
                                                Subprotocol(f"bearer.{viewer}")]) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
    async with running.client(viewer) as http:
        await http.post("/api/auth/logout")
    await asyncio.sleep(0.5)
    log = running.log_text()
    assert "/api/stream" in log and "auth/logout" in log  # the lines are there ...
    assert viewer not in log and HOOK_SECRET not in log  # ... without the credentials


async def test_security_headers(running: Running) -> None:
    async with running.client() as http:
        page = await http.get("/")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
    token = await running.token("viewer")
    async with running.client(token) as http:
        assert (await http.get("/api/sirens")).headers["cache-control"] == "no-store"


# -- sessions -------------------------------------------------------------------------------

async def test_logout_revocation_and_the_stream_closing_with_its_session(
        running: Running) -> None:
    port = running.gateway.port
    viewer = await running.token("viewer")
    async with running.client(viewer) as http:
        assert (await http.post("/api/auth/logout")).json() == {"revoked": True}
        assert (await http.get("/api/sirens")).status_code == 401
    # The token in the URL is not accepted (it would end up in logs).
    viewer = await running.token("viewer")
    with pytest.raises(websockets.exceptions.WebSocketException):
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/stream?token={viewer}") as ws:
            await ws.recv()
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/stream", subprotocols=[
            Subprotocol("siren-gateway"), Subprotocol(f"bearer.{viewer}")]) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        admin = await running.token("admin")
        async with running.client(admin) as http:
            revoked = (await http.post("/api/auth/revoke", json={"username": "viewer"})).json()
            assert revoked["revoked"] >= 1
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with running.client(viewer) as http:
        assert (await http.get("/api/sirens")).status_code == 401


async def test_logging_in_again_and_again_logs_nobody_else_out(running: Running) -> None:
    operator = await running.token("operator")
    async with running.client() as http:
        async def login() -> int:
            response = await http.post("/api/auth/token", data={
                "username": "viewer", "password": PASSWORDS["viewer"]})
            return response.status_code

        statuses: list[int] = []
        for _ in range(20):  # 1,000 logins, 50 times the per-user cap, 50 at a time
            statuses += await asyncio.gather(*(login() for _ in range(50)))
        assert statuses == [200] * 1000
    async with running.client(operator) as http:
        assert (await http.get("/api/sirens")).status_code == 200


def test_twenty_thousand_sessions_of_one_user_evict_only_its_own() -> None:
    """The same rule at the size the review used, in process (each HTTP login costs a 40 ms
    argon2id hash: 20,000 of them would take a quarter of an hour)."""
    store = TokenStore(ttl_s=3600, idle_s=3600, per_user=20)
    operator = store.issue(Principal("operator", Role.OPERATOR))
    admin = store.issue(Principal("admin", Role.ADMIN))
    for _ in range(20_000):
        store.issue(Principal("viewer", Role.VIEWER))
    assert store.resolve(operator.token) is not None and store.resolve(admin.token) is not None
    assert store.count("viewer") == 20 and store.count() == 22


# -- TLS ----------------------------------------------------------------------------------------

def make_certificate(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siren-gateway test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "gateway.crt", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_the_api_serves_https_with_the_sites_certificate(
        start_district: StartDistrict, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    site = with_users(generate_site(1, poll_interval_s=1.0, timeout_s=0.5))
    site["api"] = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    district = start_district(site)
    gateway = GatewayProcess(district.site_file, log_path=tmp_path / "tls.log", scheme="https")
    gateway.start()
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=gateway.url, verify=trusted, timeout=5) as http:
            async def up() -> bool:
                try:
                    return (await http.get("/api/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(up, 30, "HTTPS up")
            login = await http.post("/api/auth/token", data={"username": "viewer",
                                                             "password": PASSWORDS["viewer"]})
            assert login.status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}",
                                     timeout=5) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/api/health")
    finally:
        gateway.stop()


# -- the audit log ----------------------------------------------------------------------------

async def test_an_edited_audit_copy_is_caught_and_refusals_are_audited(
        running: Running, tmp_path: Path) -> None:
    viewer = await running.token("viewer")
    async with running.client(viewer) as http:
        for _ in range(3):  # refused three times, audited once (rate-limited)
            response = await http.post("/api/activations", json={
                "targets": {"all": True}, "class": "test", "signal": "growl_test"})
            assert response.status_code == 403
    admin = await running.token("admin")
    async with running.client(admin) as http:
        denied = (await http.get("/api/audit", params={"action": "access.denied"})).json()
        assert len(denied) == 1 and denied[0]["username"] == "viewer"
        assert denied[0]["source"] == "127.0.0.1"
        assert denied[0]["user_agent"].startswith("python-httpx")
    config = running.district.site_file
    database = Path(running.district.site().config.storage.path)
    ok = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "siren_gateway", "audit-verify", "--config",
                         str(config)], cwd=REPO_DIR, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(database)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    with target:
        target.execute("DROP TRIGGER audit_is_append_only_update")
        victim = target.execute("SELECT id FROM audit WHERE action = 'access.denied'"
                                ).fetchone()[0]
        target.execute("UPDATE audit SET username = 'somebody-else' WHERE id = ?", (victim,))
    target.close()
    bad = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "siren_gateway", "audit-verify", "--config",
                         str(config), "--database", str(copy)], cwd=REPO_DIR,
        capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert f"audit entry {victim} does not verify" in bad.stdout, bad.stdout


# -- no 500 from input ----------------------------------------------------------------------

async def test_out_of_range_input_is_a_422_and_history_is_not_rewritten(
        start_district: StartDistrict, tmp_path: Path) -> None:
    site = with_users(generate_site(1, poll_interval_s=1.0, timeout_s=0.5))
    site["schedules"] = [{"id": "monthly", "name": "Monthly test", "timezone": "Asia/Shanghai",
                          "recurrence": {"type": "monthly", "weekday": "wed", "nth": 1,
                                         "time": "10:00"},
                          "steps": [{"offset_s": 0, "signal": "growl_test"}]}]
    started = await start_gateway(start_district, tmp_path, site)
    try:
        admin = await started.token("admin")
        async with started.client(admin) as http:
            assert (await http.get("/api/audit", params={"before_id": 2**63})).status_code == 422
            assert (await http.get(f"/api/reports/{2**63}")).status_code == 422
            assert (await http.get(f"/api/activations/{10**30}")).status_code == 422
            far = await http.post("/api/schedules/monthly/occurrences/"
                                  "9999-12-01T10:00:00+08:00/skip")
            assert far.status_code == 422, far.text
            past = await http.post("/api/schedules/monthly/occurrences/"
                                   "2020-01-01T10:00:00+08:00/skip")
            assert past.status_code == 409, past.text
    finally:
        started.gateway.stop()


def test_the_demo_site_still_loads_with_its_hashes() -> None:
    from siren_gateway.config.loading import load_site
    from siren_gateway.data import DEMO_CONFIG

    assert load_site(DEMO_CONFIG).config.users
    assert hash_password("x").startswith("$argon2id$")

"""One account logging in again and again must log nobody else out.

    python -m bench.login_flood --logins 20000

A real gateway process; an operator and an admin log in, then the viewer logs in `--logins`
times (`--concurrency` at a time, the right password each time: the throttle only slows
failures). Afterwards the operator's and admin's sessions must still work and the viewer must
hold no more than its per-user cap. Prints the login rate (each login is one argon2id check)
and exits 1 if anyone else was logged out.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from simulators.processes import start_site
from simulators.sitegen import generate_site
from siren_gateway.security.auth import hash_password

PASSWORDS = {"viewer": "viewer-flood", "operator": "operator-flood", "admin": "admin-flood"}


async def login(http: httpx.AsyncClient, user: str) -> str | None:
    response = await http.post("/api/auth/token", data={"username": user,
                                                       "password": PASSWORDS[user]})
    if response.status_code != 200:
        return None
    token: str = response.json()["access_token"]
    return token


async def flood(url: str, logins: int, concurrency: int) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        deadline = time.monotonic() + 30
        operator = None
        while operator is None:
            try:
                operator = await login(http, "operator")
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        admin = await login(http, "admin")
        done = failed = 0
        started = time.perf_counter()

        async def worker(count: int) -> None:
            nonlocal done, failed
            for _ in range(count):
                if await login(http, "viewer") is None:
                    failed += 1
                done += 1

        share = [logins // concurrency + (i < logins % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(worker(n) for n in share))
        elapsed = time.perf_counter() - started
        alive = []
        for token in (operator, admin):
            response = await http.get("/api/sirens", headers={"Authorization": f"Bearer {token}"})
            alive.append(response.status_code == 200)
        health = (await http.get("/api/health", headers={
            "Authorization": f"Bearer {admin}"})).json()
    print(f"{done} viewer logins in {elapsed:.1f} s ({done / elapsed:.0f}/s), {failed} refused")
    print(f"operator still logged in: {alive[0]}; admin still logged in: {alive[1]}")
    print(f"live sessions after the flood: {health.get('sessions')}")
    return 0 if all(alive) and failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login_flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="login-flood-") as tmp:
        work = Path(tmp)
        site = generate_site(1, poll_interval_s=5.0, timeout_s=0.5)
        site["users"] = [{"username": name, "role": name, "password_hash": hash_password(pw)}
                         for name, pw in PASSWORDS.items()]
        fleet, gateway = start_site(site, work)
        try:
            return asyncio.run(flood(gateway.url, args.logins, args.concurrency))
        finally:
            gateway.stop()
            fleet.stop()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Set up the project's environment and run it: `python3 dev.py demo` or `python3 dev.py test`.

Needs only Python >= 3.11 and git. Creates .venv, installs the project with its dev extras
(again whenever pyproject.toml changes), then runs the demo or the checks. Extra arguments are
passed on: `python3 dev.py demo --sirens 500`, `python3 dev.py test -k modbus`.

`test` also installs the servers and browser the integration tests drive (Debian packages:
mosquitto, victoria-metrics, postgresql, chromium, fonts-noto-cjk) when they are missing and it
can: as root with apt-get; and starts PostgreSQL when none answers on 127.0.0.1:5432 (the
tests create and drop their own databases there; SIREN_TEST_POSTGRES names another server).
Otherwise it says which are missing, and the tests that need them are skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


def run(*command: str | Path) -> int:
    return subprocess.call([str(c) for c in command], cwd=ROOT)


def ensure_environment() -> None:
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing the project and its dev dependencies into .venv ...", flush=True)
    python = BIN / "python"
    if run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip") != 0:
        sys.exit("pip upgrade failed")
    if run(python, "-m", "pip", "install", "--quiet", "-e", ".[dev]") != 0:
        sys.exit("installing the project failed")
    STAMP.write_text(digest)


# The Debian packages the tests start or drive, each found by one of its commands or files
# (the CJK font makes the Chinese interface legible in the browser tests' screenshots).
TEST_PACKAGES = {"mosquitto": ("mosquitto", "/usr/sbin/mosquitto"),
                 "victoria-metrics": ("victoria-metrics",),
                 "postgresql": ("pg_ctlcluster", "/usr/bin/pg_ctlcluster"),
                 "chromium": ("chromium",),
                 "fonts-noto-cjk": ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",)}


def ensure_test_servers() -> None:
    missing = [package for package, commands in TEST_PACKAGES.items()
               if not any(shutil.which(c) or os.path.exists(c) for c in commands)]
    if not missing:
        return
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"not installed (their tests will be skipped): {', '.join(missing)}; "
              f"install them with apt-get as root, or run this as root", flush=True)
        return
    print(f"installing: {', '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if (subprocess.call(["apt-get", "update", "-qq"], env=env) != 0
            or subprocess.call(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                *missing], env=env) != 0):
        print("apt-get failed: the tests that need these will be skipped", flush=True)


POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def ensure_postgres() -> None:
    """A PostgreSQL server for the store's tests: the machine's own on 127.0.0.1:5432, started
    if it is installed but stopped; where it asks for a password, the tests get one."""
    if os.environ.get("SIREN_TEST_POSTGRES") or os.name != "posix":
        return
    if not _answers("127.0.0.1", 5432) and shutil.which("pg_ctlcluster"):
        for version in sorted(os.listdir("/etc/postgresql")) if os.path.isdir(
                "/etc/postgresql") else []:
            print(f"starting PostgreSQL {version}", flush=True)
            subprocess.call(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                             "start"])
    if not _answers("127.0.0.1", 5432) or not shutil.which("psql"):
        return  # the tests that need it say so
    env = dict(os.environ, PGCONNECT_TIMEOUT="3")
    env.pop("PGPASSWORD", None)
    probe = ["psql", POSTGRES, "-w", "-qtAc", "SELECT 1"]
    if subprocess.call(probe, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) == 0:
        return
    # A fresh Debian install asks for a password over TCP: give the tests' role one, through
    # the local socket (peer authentication as the postgres user).
    if os.geteuid() == 0 and shutil.which("runuser"):
        password = "siren-test"
        if subprocess.call(["runuser", "-u", "postgres", "--", "psql", "-qc",
                            f"ALTER ROLE postgres PASSWORD '{password}'"]) == 0:
            os.environ["SIREN_TEST_POSTGRES"] = (
                f"postgresql://postgres:{password}@127.0.0.1:5432/postgres")


def parallel(args: list[str]) -> list[str]:
    """Workers for the whole suite: its tests mostly wait on devices, servers and deadlines,
    so more workers than cores shorten it (SIREN_TEST_WORKERS=0 runs it in one process; a
    command line that chooses its own -n or its own tests keeps its choice)."""
    if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args) or any(
            not a.startswith("-") for a in args):
        return []
    workers = int(os.environ.get("SIREN_TEST_WORKERS", "4"))
    return ["-n", str(workers), "--maxschedchunk", "1"] if workers > 1 else []


def test(args: list[str]) -> int:
    ensure_test_servers()
    ensure_postgres()
    steps: list[tuple[str, list[str | Path]]] = [
        ("ruff", [BIN / "ruff", "check", "."]),
        ("mypy", [BIN / "mypy"]),
        ("pytest", [BIN / "python", "-m", "pytest", *parallel(args), *args]),
    ]
    failed = []
    for name, command in steps:
        print(f"== {name}", flush=True)
        if run(*command) != 0:
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
        return 1
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_environment()
    action, args = sys.argv[1], sys.argv[2:]
    if action == "demo":
        command = [str(BIN / "siren-gateway"), "demo", *args]
        if os.name == "posix":
            # Become the demo: a SIGTERM to this process (a supervisor, `kill`) then stops the
            # gateway and its simulators instead of leaving them running on their ports.
            os.chdir(ROOT)
            os.execv(command[0], command)
        return run(*command)
    return test(args)


if __name__ == "__main__":
    sys.exit(main())

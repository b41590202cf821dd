"""The package outside the checkout: a wheel installed into a fresh venv runs the demo (profiles,
demo site and dashboard shipped as package data), and the systemd unit in deploy/ is valid."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from simulators.sitegen import free_ports

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "siren-gateway.service"


def _build_wheel(out: Path) -> Path:
    # Built from a copy: an in-tree build leaves build/ and egg-info in the checkout.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(source)], check=True, cwd=out, timeout=300)
    (wheel,) = out.glob("siren_gateway-*.whl")
    return wheel


def _fresh_venv(where: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and nothing of the checkout on its path.

    Its third-party dependencies come from the test environment's site-packages (a path entry,
    so that environment's editable hook for this checkout is not run): this test is about what
    our wheel carries, and installing numpy and friends again would only cost minutes."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True,
                   timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    return python


@pytest.mark.slow
def test_the_wheel_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    python = _fresh_venv(tmp_path / "venv", wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(python), "-c", "import siren_gateway.data as d, simulators; "
         "print(d.DEMO_CONFIG); print(d.DEFAULT_PROFILES_DIR); print(simulators.__file__)"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    for path in where:
        assert Path(path).is_relative_to(tmp_path / "venv"), f"{path} is not from the wheel"
        assert Path(path).exists()
    assert sorted(p.name for p in Path(where[1]).glob("*.yaml"))  # the shipped profiles

    port, sim_port = free_ports(2)
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        [str(python.parent / "siren-gateway"), "demo", "--port", str(port), "--sim-port",
         str(sim_port), "--data-dir", str(tmp_path / "demo-data")],
        cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 90
            sirens: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                assert demo.poll() is None, (tmp_path / "demo.log").read_text()
                try:
                    token = http.post("/api/auth/token", data={
                        "username": "viewer", "password": "viewer-demo"}).json()["access_token"]
                    sirens = http.get("/api/sirens",
                                      headers={"Authorization": f"Bearer {token}"}).json()
                except (httpx.HTTPError, KeyError):
                    sirens = []
                if len(sirens) == 20 and all(s["reachability"] == "online" for s in sirens):
                    break
                time.sleep(0.5)
            assert len(sirens) == 20 and all(s["reachability"] == "online" for s in sirens), \
                (sirens, (tmp_path / "demo.log").read_text())
            page = http.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        log.close()


def test_the_systemd_unit_runs_a_command_our_cli_accepts() -> None:
    from siren_gateway.cli import build_parser

    text = UNIT.read_text()
    command = text.split("ExecStart=", 1)[1].split("\n#", 1)[0]
    argv = shlex.split(command.replace("\\\n", " ").splitlines()[0])
    assert argv[0] == "/opt/siren-gateway/bin/siren-gateway"
    args = build_parser().parse_args(argv[1:])
    assert isinstance(args, argparse.Namespace) and args.command == "run"
    assert str(args.database).startswith("/var/lib/siren-gateway/")  # the StateDirectory


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_the_systemd_unit_is_valid_and_sandboxed() -> None:
    verify = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                            text=True, check=False)
    # The only complaint allowed is that the venv is not installed on this machine.
    problems = [line for line in (verify.stdout + verify.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, problems
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                              capture_output=True, text=True, check=False)
    overall = next(line for line in security.stdout.splitlines() if "Overall exposure" in line)
    exposure = float(overall.split("service:")[1].split()[0])
    assert exposure <= 2.0, overall  # systemd calls up to 2.0 "OK"; a default unit is 9.6

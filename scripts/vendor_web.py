#!/usr/bin/env python3
"""Refresh the web libraries vendored into the repository from the npm registry, at the pinned
versions below: the dashboard's map (Leaflet and its marker clustering) and the accessibility
checker the browser tests inject (axe-core). Nothing is fetched at run time: the control room may
have no internet, so the files live in the package with their licences.

    python3 scripts/vendor_web.py          # needs npm; checks each tarball's registry integrity

To move to a new version, change its pin here, run this, look at the diff and run the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_VENDOR = ROOT / "siren_gateway" / "dashboard" / "vendor"
TEST_VENDOR = ROOT / "tests" / "vendor"

# package -> (version, {path in the tarball (under package/): name to write}, destination)
PINNED: dict[str, tuple[str, dict[str, str], Path]] = {
    "leaflet": ("1.9.4", {
        "dist/leaflet.js": "leaflet.js", "dist/leaflet.css": "leaflet.css",
        "LICENSE": "LICENSE"}, DASHBOARD_VENDOR / "leaflet"),
    "leaflet.markercluster": ("1.5.3", {
        "dist/leaflet.markercluster.js": "leaflet.markercluster.js",
        "dist/MarkerCluster.css": "MarkerCluster.css",
        "dist/MarkerCluster.Default.css": "MarkerCluster.Default.css",
        "MIT-LICENCE.txt": "LICENSE"}, DASHBOARD_VENDOR / "leaflet.markercluster"),
    "axe-core": ("4.10.3", {"axe.min.js": "axe.min.js", "LICENSE": "LICENSE"},
                 TEST_VENDOR / "axe-core"),
}


def npm(*args: str, cwd: Path) -> str:
    return subprocess.run(["npm", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def fetch(package: str, version: str, files: dict[str, str], destination: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch)
        integrity = json.loads(npm("view", f"{package}@{version}", "dist.integrity", "--json",
                                   cwd=where))
        packed = json.loads(npm("pack", f"{package}@{version}", "--json", cwd=where))
        tarball = where / packed[0]["filename"]
        algorithm, _, expected = integrity.partition("-")
        digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
        if digest != expected:
            raise SystemExit(f"{package}@{version}: the tarball does not match the registry's "
                             f"integrity {integrity}")
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            for inner, name in files.items():
                member = archive.extractfile(f"package/{inner}")
                if member is None:
                    raise SystemExit(f"{package}@{version} has no {inner}")
                (destination / name).write_bytes(member.read())
        (destination / "VERSION").write_text(f"{package}@{version} {integrity}\n")
        print(f"{package}@{version} -> {destination.relative_to(ROOT)}")


def main() -> None:
    for package, (version, files, destination) in PINNED.items():
        fetch(package, version, files, destination)


if __name__ == "__main__":
    main()

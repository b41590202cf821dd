"""Files shipped inside the package (so a wheel installed anywhere runs the demo): the device
profiles, the default signals and the demo district. A site points at its own profiles with
`profiles_dir:` in its site file (or `--profiles-dir` on the command line)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILES_DIR = DATA_DIR / "devices"
DEFAULT_SIGNALS_FILE = DATA_DIR / "default_signals.yaml"
DEMO_CONFIG = DATA_DIR / "demo.yaml"

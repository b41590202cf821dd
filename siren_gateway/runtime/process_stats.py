"""This process's own footprint: resident memory, open descriptors, live asyncio tasks.

Exposed in /metrics so a soak (bench/soak.py) or an operator's Prometheus can see a leak
the way it shows on a machine that has run for months.
"""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """Resident set size now (Linux /proc); elsewhere the peak, which is all getrusage has."""
    try:
        fields = Path("/proc/self/statm").read_text(encoding="ascii").split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * 1024  # kilobytes on Linux; the fallback is only approximate elsewhere


def open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def task_count() -> int:
    """Unfinished asyncio tasks of the running loop (0 when called outside one)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


def raise_descriptor_limit(needed: int) -> int:
    """Lift the soft limit on open files to the hard limit when `needed` is above it (a
    large site holds one connection per Modbus endpoint; many systems start at 1,024).
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == hard:
        return soft
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target

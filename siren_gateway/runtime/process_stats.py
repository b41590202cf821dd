"""This process's own footprint beyond what prometheus_client's process collector reports
(memory, descriptors, CPU): live asyncio tasks, in /metrics so a soak (bench/soak.py) or an
operator's Prometheus sees a task leak; and the open-file limit a large site needs.
"""

from __future__ import annotations

import asyncio
import resource


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

"""Named points where a test can make the process die, to prove recovery from that instant.

`SIREN_GATEWAY_FAILPOINTS=activation.recorded` in the environment makes the process exit at
once (no clean-up, like SIGKILL) the first time it reaches that point. Unset, a failpoint costs
one frozenset lookup. Used by the crash tests and bench/truth_chaos.py.
"""

from __future__ import annotations

import os
import sys

_ARMED = frozenset(filter(None, os.environ.get("SIREN_GATEWAY_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in _ARMED:
        sys.stderr.write(f"failpoint {name}: exiting\n")
        sys.stderr.flush()
        os._exit(70)

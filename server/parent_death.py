"""A server that stops with the process that started it, when that process asks for it.

`settlesim bench` (and the scripts built on it) start the servers they measure and stop them
with SIGTERM; a bench killed with SIGKILL (a CI job's timeout, `kill -9`, the OOM killer) could
not, and its servers kept running: ports taken, cores busy, the next benchmark measured beside
them. The bench now names itself in STOP_WITH_PARENT (its pid) for the servers it starts; a
server that finds its parent's pid there asks Linux to send it SIGTERM when that parent exits
(`prctl(PR_SET_PDEATHSIG)`), which its own handler takes as any SIGTERM: it drains and stops.
(Linux sends it when the thread that started the server exits: the bench and its scripts start
theirs from their main thread; `noop --processes N` names itself for its own children.)
A server started by hand has no such variable and outlives the shell that started it, as before.
Elsewhere than Linux this does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

STOP_WITH_PARENT = "SETTLESIM_STOP_WITH_PARENT"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

log = logging.getLogger("settlesim.server")


def stop_with_parent() -> None:
    """If STOP_WITH_PARENT names this process's parent: SIGTERM to this process once it exits
    (now, if it has exited already). The variable is taken out of the environment, so processes
    this one starts do not see it; one naming another living process is not this one's to follow."""
    named = os.environ.pop(STOP_WITH_PARENT, "")
    if not named.isdigit() or not sys.platform.startswith("linux"):
        return
    parent = int(named)
    if os.getppid() == parent:
        import ctypes  # here: the bench imports this module for its constant alone

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this server outlives its parent", errno)
            return
        if os.getppid() == parent:  # else it exited between the check and the prctl
            return
    elif is_running(parent):
        return
    log.warning("the process that started this server (%d) has exited: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def is_running(pid: int) -> bool:
    """Running: not gone, and not a zombie (a killed parent stays one until its own reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state, after the command's "(name)"

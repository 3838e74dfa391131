"""`settlesim serve --processes N`: N server processes sharing one port and one
ledger file, so the settlement path is not held to one core by Python's GIL.

The parent loads the world once and forks; each child starts its own gRPC
server (SO_REUSEPORT: the kernel spreads new connections over the children) and
its own ledger connection. Correctness across processes rests on SQLite: every
write is an IMMEDIATE transaction, so writers on the shared file are serialised
and each reads the yearly totals and msgids the others committed (the same
guarantees as one process; see server/ledger/sqlite/store.py). gRPC objects must not cross
a fork, so nothing of gRPC exists in the parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import replace

from settlesim.server.app import INTEGRITY_CHECK_SKIPPED, ServerConfig, default_db_path, start, tune_gc
from settlesim.server.auth import check_combination
from settlesim.server.journal import Journal, journal_path
from settlesim.server.ledger import open_ledger
from settlesim.server.runs import RunRegistry
from settlesim.server.stop_request import StopRequest
from settlesim.server.world_loader import load_world

log = logging.getLogger("settlesim.server")


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: fixes the port, even port 0, for the
    children to share, without taking connections itself."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _watch_parent(parent: int, stopped: StopRequest) -> None:
    """Stop when the parent is gone: a parent killed with SIGKILL cannot forward
    SIGTERM, and an orphaned server would keep the port and the ledger open."""
    while not stopped.wait(0.5):
        if os.getppid() != parent:
            log.warning("server process %d: parent %d is gone, stopping", os.getpid(), parent)
            stopped.set()


def _child(config: ServerConfig, world: object, ready: int, parent: int) -> None:
    """Run one server until SIGTERM or the parent's death; never returns."""
    code = 0
    try:
        stopped = StopRequest().handle(signal.SIGTERM)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it forwards SIGTERM
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent to here
        threading.Thread(target=_watch_parent, args=(parent, stopped), daemon=True).start()
        running = start(config, world)  # type: ignore[arg-type]
        tune_gc()
        os.write(ready, b"1")
        os.close(ready)
        stopped.wait()
        log.info("server process %d: received %s, draining", os.getpid(), stopped.signal_name)
        running.stop()
        log.info("server process %d stopped", os.getpid())
    except BaseException:
        log.exception("server process %d failed", os.getpid())
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def serve_processes(config: ServerConfig, processes: int) -> int:
    """Fork `processes` servers on one port; drain them all on SIGTERM/SIGINT."""
    world = load_world(config.world_dir)
    # The ledger file is checked (created, upgraded) once, here: a bad file is one
    # line from the parent, not a traceback from each child, and N children do not
    # each run the integrity check. Nothing of SQLite is open across the fork.
    open_ledger(config.db_path or default_db_path(), integrity_check=config.integrity_check).close()
    if config.journal:
        # The call journal's file too (its tables and the run store's, WAL mode): children
        # creating them at once refused each other "database is locked", since SQLite does
        # not wait for the switch to WAL, and the refused child made the whole
        # server exit with 1 at start. Its writer thread has ended before the fork.
        journal = Journal(journal_path(config.db_path or default_db_path()))
        RunRegistry(journal)
        journal.close()
    reserved = _reserve(config.host, config.port)
    port = reserved.getsockname()[1]
    shared = replace(config, port=port, reuse_port=True, integrity_check=False)
    children: list[int] = []
    readies: list[int] = []
    parent = os.getpid()
    # Until each process has its own handlers a SIGTERM waits (blocked, not lost): the parent's
    # came after its children were up, and one sent before killed it, unforwarded.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        for _ in range(processes):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                reserved.close()
                os.close(read_end)
                _child(shared, world, write_end, parent)
            os.close(write_end)
            children.append(pid)
            readies.append(read_end)
    except BaseException:  # no fork or no pipe: stop the children there are, unblock the signals
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        raise
    stopping = StopRequest()

    def stop_all(signum: int | None = None, _frame: object = None) -> None:
        # safe in a handler interrupted by the next signal (server/stop_request.py)
        if signum is None:
            stopping.set()
        else:
            stopping.on_signal(signum)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # A stop asked for meanwhile reaches each child, which drains once it is up and says so.
    started = all(os.read(fd, 1) == b"1" for fd in readies)
    for fd in readies:
        os.close(fd)
    reserved.close()
    if not started:
        stop_all()
    else:
        db = config.db_path or default_db_path()
        log.info("serving world %r on %s:%d with %d processes, ledger %s", world.name, config.host, port,
                 processes, db)  # fmt: skip
        # The same start-up warnings as one process (INSECURE mode and the like).
        for warning in check_combination(config.auth, config.host, config.tls_cert, config.tls_key, config.client_ca):
            log.warning(warning)
        if not config.integrity_check:
            log.warning(INTEGRITY_CHECK_SKIPPED)
        print(f"settlesim serving on {config.host}:{port} (db {db}, {processes} processes)", flush=True)
    failed = not started
    remaining = set(children)
    while remaining:
        pid, status = os.wait()
        remaining.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0 or not stopping.is_set():
            if not stopping.is_set():
                log.error("server process %d exited; stopping the others", pid)
            failed = True
            stop_all()
    why = stopping.signal_name if stopping.signum is not None else "a server process ended" if failed else "done"
    log.info("stopped (%s)", why)
    return 1 if failed else 0

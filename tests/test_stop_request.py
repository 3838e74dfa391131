"""server/stop_request.py: a stop asked for by signals, safe when one signal's handler
is interrupted by the next (a threading.Event set in a handler hung `serve --processes 2`)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from settlesim.server.stop_request import StopRequest

# For two seconds a thread sends the process SIGUSR1s while the main thread runs their
# handlers and waits: handlers interrupt each other and the wait at every point. With a
# threading.Event in StopRequest this hangs (3 runs of 3 on this machine); the test runs
# it in a child so that a hang is a failure, not a stuck suite.
STORM = """
import os, signal, threading, time
from settlesim.server.stop_request import StopRequest
request = StopRequest()
signal.signal(signal.SIGUSR1, request.on_signal)
def storm():
    until = time.monotonic() + 2
    while time.monotonic() < until:
        for _ in range(1000):
            os.kill(os.getpid(), signal.SIGUSR1)
sender = threading.Thread(target=storm)
sender.start()
while sender.is_alive():
    request.wait(0.001)
sender.join()
assert request.is_set() and request.signal_name == "SIGUSR1"
print("stopped")
"""


def test_handlers_interrupted_by_the_next_signal_do_not_hang() -> None:
    done = subprocess.run([sys.executable, "-c", STORM], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr


def test_a_stop_is_seen_by_every_waiting_thread_and_stays_asked_for() -> None:
    request = StopRequest()
    assert request.wait(0.01) is False and not request.is_set()
    seen: list[bool] = []
    waiters = [threading.Thread(target=lambda: seen.append(request.wait(10))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.05)
    request.set()
    request.set()  # twice is once
    for waiter in waiters:
        waiter.join(10)
    assert seen == [True, True, True]
    assert request.is_set() and request.wait() is True
    assert request.signal_name == "a stop"  # no signal asked


def test_a_full_pipe_is_still_a_stop() -> None:
    request = StopRequest()
    for _ in range(100_000):  # more bytes than a pipe holds: the writes past it are dropped
        request.set()
    assert request.is_set()


# A SIGTERM that another thread takes: the kernel may hand a process's signal to any thread
# that does not block it, and Python runs the handler only in the main thread. The child's
# other thread sends SIGTERM to itself (thread-directed) while the main thread waits.
OTHER_THREAD = """
import signal, sys, threading, time
from settlesim.server.stop_request import StopRequest
request = StopRequest().handle(signal.SIGTERM)
def take_the_signal():
    time.sleep(0.3)  # the main thread is in its wait by now
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    time.sleep(10)
threading.Thread(target=take_the_signal, daemon=True).start()
began = time.monotonic()
stopped = request.wait(%(wait)s)
print(stopped, request.signal_name, round(time.monotonic() - began, 1))
"""


def test_a_signal_another_thread_takes_still_stops_the_main_threads_wait() -> None:
    """Without the wakeup fd the main thread slept through it: `False SIGTERM 5.0` (the handler
    ran only once the wait's timeout woke the main thread)."""
    done = subprocess.run(
        [sys.executable, "-c", OTHER_THREAD % {"wait": 5}], capture_output=True, text=True, timeout=60
    )
    stopped, name, seconds = done.stdout.split()
    assert (done.returncode, stopped, name) == (0, "True", "SIGTERM"), done.stderr
    assert float(seconds) < 2.0  # 0.3 s in, not the wait's 5 s timeout


def test_a_wait_without_a_timeout_sees_it_too() -> None:
    done = subprocess.run(
        [sys.executable, "-c", OTHER_THREAD % {"wait": None}], capture_output=True, text=True, timeout=15
    )
    assert done.stdout.split()[:2] == ["True", "SIGTERM"], done.stderr


def test_a_wakeup_without_a_stop_is_not_a_stop() -> None:
    """The wakeup fd is written for every handled signal; only a stop's handler stops."""
    script = """
import os, signal, threading, time
from settlesim.server.stop_request import StopRequest
request = StopRequest().handle(signal.SIGTERM)
signal.signal(signal.SIGUSR1, lambda *_: None)
threading.Thread(target=lambda: (time.sleep(0.2), signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)),
                 daemon=True).start()
print(request.wait(1.0))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "False", done.stderr

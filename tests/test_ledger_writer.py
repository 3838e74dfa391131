"""The ledger's one writer thread answers every write. If it ever dies, a write
fails at once with UNAVAILABLE / LEDGER_UNAVAILABLE (cause writer_stopped, saying
why) instead of waiting forever for an answer nobody will give."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL
from settlesim.server.ledger.sqlite import SqliteLedger as Ledger
from settlesim.server.rules.reasons import Reason, Refusal

# The dying writers below die loudly on purpose (the traceback goes to stderr).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class DeadOnArrival(Ledger):
    def _serve_batches(self) -> None:
        raise RuntimeError("disk on fire")


class DiesWhileCallersWait(Ledger):
    """Takes writes off the queue, then dies without answering them."""

    def __init__(self, path: Path) -> None:
        self.die = threading.Event()
        self.took = threading.Event()
        super().__init__(path)

    def _serve_batches(self) -> None:
        self._queue.get()
        self.took.set()
        self.die.wait(30)
        raise RuntimeError("killed mid-batch")


def void(ledger: Ledger, n: int = 1) -> object:
    return ledger.void("", f"V{n}", CANCER_HOSPITAL, f"hash-{n}", f"M{n}")


def test_a_write_fails_at_once_when_the_writer_has_died(tmp_path):
    ledger = DeadOnArrival(tmp_path / "ledger.db")
    try:
        ledger._writer.join(10)
        started = time.monotonic()
        with pytest.raises(Refusal, match="writer has stopped: RuntimeError\\('disk on fire'\\)") as caught:
            void(ledger)
        assert (caught.value.reason, caught.value.metadata) == (Reason.LEDGER_UNAVAILABLE, {"cause": "writer_stopped"})
        assert time.monotonic() - started < 0.5
        assert ledger.find_message("", CANCER_HOSPITAL, "M1") is None  # reads still work
    finally:
        ledger.close()


def test_a_write_fails_at_once_when_the_writer_stopped_without_an_error(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        ledger._queue.put(None)  # the writer's stop mark, without close()
        ledger._writer.join(10)
        with pytest.raises(Refusal, match="writer has stopped; no write") as caught:
            void(ledger)
        assert caught.value.reason is Reason.LEDGER_UNAVAILABLE
    finally:
        ledger.close()


def test_a_caller_already_waiting_is_told_when_the_writer_dies(tmp_path):
    ledger = DiesWhileCallersWait(tmp_path / "ledger.db")
    outcome: list[BaseException | object] = []

    def call() -> None:
        try:
            outcome.append(void(ledger))
        except BaseException as error:
            outcome.append(error)

    waiting = threading.Thread(target=call)
    try:
        waiting.start()
        assert ledger.took.wait(10)  # its write is in the writer's hands
        time.sleep(2 * Ledger.WRITER_CHECK_SECONDS)
        assert outcome == []  # a slow writer is waited for
        ledger.die.set()
        waiting.join(4 * Ledger.WRITER_CHECK_SECONDS)
        assert not waiting.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], Refusal), outcome
        assert outcome[0].reason is Reason.LEDGER_UNAVAILABLE
        assert "killed mid-batch" in str(outcome[0])
    finally:
        ledger.die.set()
        waiting.join(10)
        ledger.close()


def test_writes_still_work_and_close_after_many_quick_ones(tmp_path):
    """The liveness check costs nothing visible: a burst of writes from threads all answer."""
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        threads = [threading.Thread(target=void, args=(ledger, n)) for n in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(ledger.find_message("", CANCER_HOSPITAL, f"M{n}") for n in range(64))
        assert ledger.check() == []
    finally:
        ledger.close()

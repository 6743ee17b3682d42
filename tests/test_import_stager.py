"""The import's stager thread (state/imports._Stager) when it fails or stops: never a hang.

After its insert failed it keeps draining the queue, so the import fails with the stager's own error
(not a hang on a full queue, nor the error of a stopped stager thread); a put that waits on a full
queue notices a stager thread that stops meanwhile. Written for mutants a mutation run left alive
(the drain's `continue` made a `break`; the put's timeout dropped).
"""

from __future__ import annotations

import sqlite3
import threading
import time

from state import imports
from state.errors import StoreError
from state.imports import _Stager
from state.store import Store


def raised_on_a_thread(work) -> list[BaseException]:
    """Run `work` on a thread; what it raised. Fails the test if it is still running after 10 s."""
    raised: list[BaseException] = []

    def run():
        try:
            work()
        except BaseException as exc:
            raised.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the import hung on the stager's queue"
    return raised


class FailingConnection:
    """A connection whose first insert fails once `go` is set (so that the queue is full by then)."""

    total_changes = 0

    def __init__(self):
        self.go = threading.Event()

    def execute(self, *args):
        self.go.wait(5)
        raise sqlite3.OperationalError("disk I/O error")


def test_a_failed_stager_drains_the_queue_and_the_import_fails_with_its_own_error():
    conn = FailingConnection()

    def importing():
        with _Stager(conn) as stager:
            for i in range(4):
                if i == 3:  # b1 at the insert, b2 and b3 queued: the queue (2) is full; b4 waits
                    threading.Timer(0.2, conn.go.set).start()
                stager.stage([f"r{i}@example.com"])
            # b4 was queued before the failure was known: the import ends normally here

    outcome = raised_on_a_thread(importing)
    assert len(outcome) == 1 and isinstance(outcome[0], sqlite3.OperationalError)
    assert str(outcome[0]) == "disk I/O error"


def test_a_put_waiting_on_a_full_queue_fails_when_the_stager_thread_stops_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "_PUT_WAIT", 0.05)

    def stops_once_the_queue_is_full(self):
        while not self._batches.full():   # a stager thread that dies without taking anything
            time.sleep(0.01)
        time.sleep(0.3)                   # by now the third stage() is waiting on the full queue

    monkeypatch.setattr(imports._Stager, "_run", stops_once_the_queue_is_full)

    def importing():
        with Store(tmp_path / "store.db") as store, imports._Stager(store.conn) as stager:
            for n in range(3):
                stager.stage([f"u{n}@example.com"])

    assert [(type(e), str(e)) for e in raised_on_a_thread(importing)] == [
        (StoreError, "the import's staging thread stopped before the import ended; nothing was saved")]

"""The import's stager thread (state/imports._Stager) after its insert failed: it keeps draining the
queue, so the import fails with the stager's own error (not a hang on a full queue, nor the error of
a stopped stager thread).

Written for a mutant a mutation run left alive (the drain's `continue` made a `break`).
"""

from __future__ import annotations

import sqlite3
import threading

import pytest

from state.imports import _Stager


class FailingConnection:
    """A connection whose first insert fails once `go` is set (so that the queue is full by then)."""

    total_changes = 0

    def __init__(self):
        self.go = threading.Event()

    def execute(self, *args):
        self.go.wait(5)
        raise sqlite3.OperationalError("disk I/O error")


def test_a_failed_stager_drains_the_queue_and_the_import_fails_with_its_own_error():
    conn, outcome = FailingConnection(), []

    def importing():
        try:
            with _Stager(conn) as stager:
                for i in range(4):
                    if i == 3:  # b1 at the insert, b2 and b3 queued: the queue (2) is full; b4 waits
                        threading.Timer(0.2, conn.go.set).start()
                    stager.stage([f"r{i}@example.com"])
                # b4 was queued before the failure was known: the import ends normally here
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=importing, daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the import hung on the stager's queue"
    assert len(outcome) == 1 and isinstance(outcome[0], sqlite3.OperationalError)
    assert str(outcome[0]) == "disk I/O error"

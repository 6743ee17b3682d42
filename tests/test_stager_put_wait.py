"""The import's stager: a put that waits on a full queue notices a stager thread that stops meanwhile.

Written for mutants a mutation run left alive in _Stager._put (the put's timeout dropped).
"""

from __future__ import annotations

import threading
import time

from state import imports
from state.errors import StoreError
from state.store import Store


def test_a_put_waiting_on_a_full_queue_fails_when_the_stager_thread_stops_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "_PUT_WAIT", 0.05)

    def stops_once_the_queue_is_full(self):
        while not self._batches.full():   # a stager thread that dies without taking anything
            time.sleep(0.01)
        time.sleep(0.3)                   # by now the third stage() is waiting on the full queue

    monkeypatch.setattr(imports._Stager, "_run", stops_once_the_queue_is_full)
    raised: list = []

    def importing():
        try:
            with Store(tmp_path / "store.db") as store, imports._Stager(store.conn) as stager:
                for n in range(3):
                    stager.stage([f"u{n}@example.com"])
        except BaseException as exc:
            raised.append(exc)

    runner = threading.Thread(target=importing, daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "stage() waited forever on a stager thread that had stopped"
    assert [(type(e), str(e)) for e in raised] == [
        (StoreError, "the import's staging thread stopped before the import ended; nothing was saved")]

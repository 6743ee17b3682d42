"""The ordering trap on PostgreSQL (state/pg_events.py): appends commit in seq order, so a pusher that
reads after its watermark reads every committed event exactly once."""

from __future__ import annotations

import random
import threading
import time

import pytest

from state import pg_events, pg_schema
from state.errors import StoreError


def connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def pg_store(pg_url):
    with connect(pg_url) as conn:
        pg_schema.migrate(conn)
    return pg_url


def event(address: str, kind: str = "suppressed") -> dict:
    return {"recorded_at": "2026-01-01T00:00:00.000000+00:00", "kind": kind, "address": address, "scope": "*",
            "reason": "unsubscribed", "origin": "recipient", "source": "test"}


class Pusher:
    """A pusher's loop: read the events after the watermark, move the watermark to the last one read."""

    def __init__(self, url: str):
        self.conn = connect(url)
        self.watermark = 0
        self.read: list[int] = []

    def poll(self) -> None:
        while batch := pg_events.events_after(self.conn, self.watermark, 50):
            self.read += [row["seq"] for row in batch]
            self.watermark = batch[-1]["seq"]


def naive_append(conn, address: str) -> int:
    """What an append without the lock does: take a number now, commit whenever."""
    return conn.execute("INSERT INTO events (recorded_at, kind, address, scope) VALUES (%s, 'suppressed', %s, '*')"
                        " RETURNING seq", ("2026-01-01T00:00:00.000000+00:00", address)).fetchone()[0]


def test_the_trap_without_the_lock_a_pusher_never_reads_an_event_that_commits_after_a_later_one(pg_store):
    """Kept to show what the lock is for: two writers in an explicit order lose the first one's event."""
    with connect(pg_store) as a, connect(pg_store) as b:
        pusher = Pusher(pg_store)
        a_tx = a.transaction()
        a_tx.__enter__()
        first = naive_append(a, "a@example.com")           # A takes the smaller number...
        with b.transaction():
            second = naive_append(b, "b@example.com")      # ...B takes the next one and commits first
        pusher.poll()                                       # the pusher reads B's and passes A's number
        a_tx.__exit__(None, None, None)                    # A commits
        pusher.poll()
        pusher.conn.close()
    assert first < second
    assert pusher.read == [second] and pusher.watermark == second  # A's event is lost for good


def test_with_the_lock_the_same_order_of_writers_loses_nothing(pg_store):
    with connect(pg_store) as a, connect(pg_store) as b:
        pusher = Pusher(pg_store)
        a_tx = a.transaction()
        a_tx.__enter__()
        [first] = pg_events.append(a, [event("a@example.com")])
        b_took: list[int] = []

        def writer_b():
            with b.transaction():
                b_took.extend(pg_events.append(b, [event("b@example.com")]))

        b_thread = threading.Thread(target=writer_b)
        b_thread.start()
        time.sleep(0.3)
        assert b_took == []            # B waits for A's transaction to end before it takes a number
        pusher.poll()
        assert pusher.read == []       # nothing committed yet
        a_tx.__exit__(None, None, None)
        b_thread.join(10)
        pusher.poll()
        pusher.conn.close()
    assert b_took and first < b_took[0]
    assert pusher.read == [first, b_took[0]]


def test_concurrent_writers_that_commit_late_or_roll_back_lose_nothing_to_a_pusher_reading_meanwhile(pg_store):
    writers, transactions = 6, 12
    committed: set[int] = set()
    rolled_back: set[int] = set()
    record = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    class Rollback(Exception):
        pass

    def writer(number: int) -> None:
        rng = random.Random(number)
        try:
            with connect(pg_store) as conn:
                for i in range(transactions):
                    took: list[int] = []
                    try:
                        with conn.transaction():
                            addresses = [f"w{number}-{i}-{k}@example.com" for k in range(rng.randint(1, 3))]
                            if rng.random() < 0.3:  # import's bulk path takes the same lock
                                appended = pg_events.copy_append(
                                    conn, [tuple(event(a).get(c) for c in pg_events.EVENT_COLUMNS)
                                           for a in addresses])
                                took = list(range(appended.first, appended.last + 1))
                                assert appended.count == len(addresses) == len(took)
                            else:
                                took = pg_events.append(conn, [event(a) for a in addresses])
                            time.sleep(rng.uniform(0, 0.05))  # the delay between the number and the commit
                            if rng.random() < 0.2:
                                raise Rollback
                    except Rollback:
                        with record:
                            rolled_back.update(took)
                        continue
                    with record:
                        committed.update(took)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    pusher = Pusher(pg_store)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    polls = 0
    while any(t.is_alive() for t in threads):
        pusher.poll()
        polls += 1
        time.sleep(0.005)
    pusher.poll()
    pusher.conn.close()
    assert errors == []
    assert committed and rolled_back and polls > 10
    assert len(pusher.read) == len(set(pusher.read))            # each read once
    assert set(pusher.read) == committed                        # every committed event, no rolled-back one
    assert pusher.read == sorted(pusher.read)


def test_an_append_outside_a_transaction_is_refused(pg_store):
    with connect(pg_store) as conn:
        with pytest.raises(StoreError, match="must run inside a transaction"):
            pg_events.append(conn, [event("a@example.com")])
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_append_selected_and_copy_return_the_seqs_they_took(pg_store):
    with connect(pg_store) as conn:
        with conn.transaction():
            assert pg_events.append(conn, [event("a@example.com"), event("b@example.com")]) == [1, 2]
        with conn.transaction():
            got = pg_events.append_selected(
                conn, "SELECT recorded_at, 'applied', address, scope, reason, origin, source, 'sink', seq,"
                " occurred_at, legal_basis, explanation, message, details FROM events ORDER BY seq")
        assert got == pg_events.Appended(2, 3, 4)
        assert conn.execute("SELECT seq, kind, ref_seq FROM events WHERE seq > 2 ORDER BY seq").fetchall() == [
            (3, "applied", 1), (4, "applied", 2)]
        with conn.transaction():
            assert pg_events.copy_append(conn, []) == pg_events.Appended(0, 0, 0)


def test_an_append_in_a_repeatable_read_transaction_is_refused_and_writes_nothing(pg_store):
    import psycopg

    with connect(pg_store) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(StoreError, match="needs READ COMMITTED isolation, not REPEATABLE READ"):
            with conn.transaction():
                pg_events.append(conn, [event("a@example.com")])
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0

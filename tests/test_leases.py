"""Adapter leases (connector/leases.py): one daemon drives an adapter at a time; a dead holder's
adapters are taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector.leases import FileLeases, LeaseHolder, PgLeases, lease_key
from state.errors import StoreError
from state import pg_schema

ROOT = Path(__file__).resolve().parent.parent
POSITIVE, NEGATIVE = "hubspot", "mailchimp"  # their keys' signs differ: both halves of pg_locks are read right


@pytest.fixture
def pg_store(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        pg_schema.migrate(conn)
    return pg_url


@pytest.fixture
def managers(pg_store):
    made = []

    def make(name: str) -> PgLeases:
        made.append(PgLeases(pg_store, daemon_id=name, connect_timeout=5))
        return made[-1]

    yield make
    for manager in made:
        manager.close()


def terminate(url: str, backend_pid: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (backend_pid,)).fetchone()[0]
        # pg_terminate_backend only signals: wait until the backend is gone.
        for _ in range(200):
            if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend_pid,)).fetchone():
                return
            time.sleep(0.02)
    raise AssertionError(f"backend {backend_pid} still alive")


def test_lease_keys_are_stable_signed_64_bit_numbers():
    assert lease_key(POSITIVE) == 1188104669154314042
    assert lease_key(NEGATIVE) == -3753409211331194680
    assert lease_key("hubspot ") != lease_key(POSITIVE)


def test_two_daemons_contend_and_each_adapter_has_one_holder(managers):
    a, b = managers("daemon-a"), managers("daemon-b")
    assert a.try_acquire(POSITIVE) is True
    assert b.try_acquire(POSITIVE) is False
    assert b.try_acquire(NEGATIVE) is True
    assert a.try_acquire(NEGATIVE) is False
    assert a.try_acquire(POSITIVE) is True   # holding it already: still True, and not locked twice
    assert a.held() == {POSITIVE} and b.held() == {NEGATIVE}
    holders = b.holders()
    assert set(holders) == {POSITIVE, NEGATIVE}
    assert holders == a.holders()
    assert holders[POSITIVE].daemon_id == "daemon-a" and holders[NEGATIVE].daemon_id == "daemon-b"
    assert holders[POSITIVE].host == socket.gethostname() and holders[POSITIVE].pid == os.getpid()
    assert holders[POSITIVE].since.endswith("+00:00")

    a.release(POSITIVE)                       # one release ends it, though it was asked for twice
    assert a.held() == set() and set(b.holders()) == {NEGATIVE}
    assert b.try_acquire(POSITIVE) is True
    assert b.held() == {POSITIVE, NEGATIVE}


def test_a_holder_whose_connection_is_terminated_loses_its_leases_to_the_next_try(managers, pg_store):
    a, b = managers("daemon-a"), managers("daemon-b")
    assert a.try_acquire(POSITIVE) and a.try_acquire(NEGATIVE)
    assert not b.try_acquire(POSITIVE)
    terminate(pg_store, a.backend_pid)
    # Its rows are still in the table, but a dead holder is never reported.
    assert b.holders() == {}
    assert b.try_acquire(POSITIVE) is True and b.try_acquire(NEGATIVE) is True
    assert a.held() == set()                  # a notices it lost them
    assert {k: v.daemon_id for k, v in b.holders().items()} == {POSITIVE: "daemon-b", NEGATIVE: "daemon-b"}
    # a reconnects and can lease again what is free, but nothing b holds.
    assert a.try_acquire(POSITIVE) is False and a.try_acquire("sendgrid") is True
    assert a.held() == {"sendgrid"}


def test_a_holder_that_closes_its_connection_hands_over(managers):
    a, b = managers("daemon-a"), managers("daemon-b")
    assert a.try_acquire(POSITIVE)
    a.close()
    assert b.holders() == {} and b.try_acquire(POSITIVE)


HOLDER = """
import sys, time
from connector.leases import PgLeases
leases = PgLeases(sys.argv[1], daemon_id="doomed")
assert leases.try_acquire("hubspot") and leases.try_acquire("mailchimp")
print("held", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_daemon_is_taken_over_within_two_polling_intervals(managers, pg_store):
    # A daemon's interval is seconds to minutes; 2 s keeps the machine's load out of the outcome.
    interval = 2.0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_store], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        survivor = managers("survivor")
        assert survivor.try_acquire(POSITIVE) is False
        assert {h.daemon_id for h in survivor.holders().values()} == {"doomed"}
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # The survivor's polling loop: every interval it tries what it does not hold.
        while survivor.held() != {POSITIVE, NEGATIVE}:
            assert time.monotonic() - killed_at < 10 * interval, "no takeover"
            time.sleep(interval)
            for adapter in (POSITIVE, NEGATIVE):
                survivor.try_acquire(adapter)
        took = time.monotonic() - killed_at
    finally:
        holder.kill()
        holder.wait()
    print(f"\ntakeover after SIGKILL: {took:.2f} s (polling interval {interval} s)")
    assert took <= 2 * interval
    assert set(survivor.holders()) == {POSITIVE, NEGATIVE}
    assert {h.daemon_id for h in survivor.holders().values()} == {"survivor"}


def test_on_sqlite_the_store_lock_makes_one_daemon_hold_every_adapter(tmp_path):
    store = tmp_path / "store.db"
    a = FileLeases(store, ["inbox", "sink"])
    b = FileLeases(store, ["inbox", "sink"])
    try:
        assert a.try_acquire("inbox") is True
        assert b.try_acquire("sink") is False and b.try_acquire("inbox") is False
        assert a.held() == {"inbox"} and b.held() == set()
        seen = b.holders()
        assert set(seen) == {"inbox", "sink"}
        assert seen["inbox"] == LeaseHolder(f"{socket.gethostname()}/{os.getpid()}", socket.gethostname(),
                                            os.getpid(), seen["inbox"].since)
        assert seen["inbox"].since and seen == a.holders()
        assert a.try_acquire("sink") and a.held() == {"inbox", "sink"}
        a.release("inbox")
        assert b.try_acquire("inbox") is False   # a still holds sink, so the store's lock
        a.release("sink")
        assert a.held() == set() and b.try_acquire("sink") is True
        assert a.holders()["inbox"].pid == os.getpid()
    finally:
        a.close()
        b.close()
    assert FileLeases(store, ["inbox"]).holders() == {}


def test_a_dead_holders_row_is_not_reported_while_a_new_holder_has_the_lock_but_no_row_yet(managers, pg_store):
    import psycopg

    a = managers("daemon-a")
    assert a.try_acquire(POSITIVE)
    terminate(pg_store, a.backend_pid)
    # A new holder between its pg_try_advisory_lock and its row: the lock is taken, the row is a's.
    with psycopg.connect(pg_store, autocommit=True) as new_holder:
        assert new_holder.execute("SELECT pg_try_advisory_lock(%s)", (lease_key(POSITIVE),)).fetchone()[0]
        assert managers("observer").holders() == {}


def test_one_manager_shared_by_threads_never_stacks_a_lock(managers, monkeypatch):
    """An acquire during another thread's held() must not be forgotten (a second take would stack the lock)."""
    import threading

    from connector import leases

    shared, other = managers("shared"), managers("other")
    assert shared.try_acquire(POSITIVE)
    real_key = leases.lease_key
    in_window, acquired, watcher = threading.Event(), threading.Event(), {}

    def key(adapter):
        # In the watching thread's held(): between its read of pg_locks and its update, let the
        # other thread acquire (it cannot while calls are serialized: it waits, and this gives up).
        if threading.get_ident() == watcher.get("id") and not in_window.is_set():
            in_window.set()
            acquired.wait(1.0)
        return real_key(adapter)

    monkeypatch.setattr(leases, "lease_key", key)

    def watch():
        watcher["id"] = threading.get_ident()
        shared.held()

    def acquire():
        assert shared.try_acquire(NEGATIVE)
        acquired.set()

    watching = threading.Thread(target=watch)
    watching.start()
    assert in_window.wait(5)
    acquiring = threading.Thread(target=acquire)
    acquiring.start()
    acquiring.join(5)
    watching.join(5)
    assert shared.try_acquire(NEGATIVE)   # held already: must not take the lock a second time
    shared.release(NEGATIVE)
    assert other.try_acquire(NEGATIVE)    # one release freed it


def test_the_lease_connection_keeps_the_urls_own_options(pg_store):
    url = pg_store + "&options=" + "-c%20statement_timeout%3D12345"
    leases = PgLeases(url, daemon_id="opts")
    try:
        assert leases.try_acquire(POSITIVE)
        conn = leases._conn
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "12345ms"
        assert conn.execute("SHOW application_name").fetchone()[0] == "optout-sync-leases"
        # TCP settings (a unix socket ignores them, so they are read from what libpq was given):
        # the server drops a silent holder after about dead_after (60 s); the holder gives up at half.
        given = conn.info.get_parameters()
        assert given["tcp_user_timeout"] == "30000" and given["keepalives_idle"] == "15"
        assert "-c tcp_keepalives_idle=15 -c tcp_keepalives_interval=15 -c tcp_keepalives_count=3" in given["options"]
    finally:
        leases.close()


def test_a_lease_that_cannot_be_recorded_is_not_kept(managers, pg_store):
    import psycopg

    with psycopg.connect(pg_store, autocommit=True) as conn:
        conn.execute("DROP TABLE leases")
    a = managers("daemon-a")
    with pytest.raises(StoreError, match='^cannot record the lease of hubspot: relation "leases" does not exist; '
                                         "is the store's schema migrated\\?$"):
        a.try_acquire(POSITIVE)
    assert a.held() == set()
    with psycopg.connect(pg_store, autocommit=True) as other:   # the adapter is free for everyone else
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (lease_key(POSITIVE),)).fetchone()[0]


def test_a_release_frees_the_lock_even_when_the_row_cannot_be_deleted(managers, pg_store):
    import psycopg

    a, b = managers("daemon-a"), managers("daemon-b")
    assert a.try_acquire(POSITIVE)
    with psycopg.connect(pg_store, autocommit=True) as conn:
        conn.execute("ALTER TABLE leases RENAME TO leases_gone")
    a.release(POSITIVE)
    assert a.held() == set()
    with psycopg.connect(pg_store, autocommit=True) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (lease_key(POSITIVE),)).fetchone()[0]

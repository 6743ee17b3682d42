"""What the webhook receiver accepted (table `webhook_receipts`): vendor event ids and signature nonces.

Written in the same transaction as the opt-outs a request carried, so a retried event is
recognised exactly when its opt-outs were kept, and a replayed signature exactly when its
request was accepted. Rows older than any retry or replay window are pruned.
"""

from __future__ import annotations

from collections.abc import Iterable

from .store import Store  # or state.pg_store.PgStore: the same methods, the same meaning

# SQLite's default limit on bound parameters is far above this; chunks keep statements small.
_CHUNK = 500


def known(store: Store, adapter: str, keys: Iterable[str]) -> set[str]:
    """The keys of `keys` already received for this adapter."""
    keys = list(dict.fromkeys(keys))
    found: set[str] = set()
    for start in range(0, len(keys), _CHUNK):
        part = keys[start:start + _CHUNK]
        marks = ", ".join("?" * len(part))
        found.update(key for (key,) in store.conn.execute(
            f"SELECT key FROM webhook_receipts WHERE adapter = ? AND key IN ({marks})", (adapter, *part)))
    return found


def remember(store: Store, adapter: str, keys: Iterable[str], received_at: str) -> None:
    """Record keys as received (call inside the transaction that keeps what they carried)."""
    store.conn.executemany(
        store.dialect.insert_or_ignore("webhook_receipts (adapter, key, received_at) VALUES (?, ?, ?)"),
        [(adapter, key, received_at) for key in dict.fromkeys(keys)])


def prune(store: Store, before: str, prefix: str = "") -> int:
    """Forget receipts older than `before` (ISO UTC) whose key starts with `prefix`; how many."""
    with store.transaction():
        return store.conn.execute(
            "DELETE FROM webhook_receipts WHERE received_at < ? AND substr(key, 1, ?) = ?",
            (before, len(prefix), prefix)).rowcount

"""Reconcile of a sink by a merge: the sink's full read against the store's suppressions, both by address.

A sink that is written, not read from, needs only one answer from its reconcile: which stored
suppressions its full read lacks. When the read comes in address order (a `csv_file` as a reconcile
or a hand sort left it, or a vendor that lists by address), that is a merge of two sorted streams:
the store's primary key is walked in order beside the read, and nothing of the read is stored.

Rows that come out of order (a `csv_file`'s appended batches) cannot be merged; they go to the
temp table `source_set` as before, and a suppression the merge found missing is re-applied only
if no such row holds it either. So the cost of the temp table is paid only for the part of the read
that is out of order, and the answer is the same as the temp table's whatever the order.
"""

from __future__ import annotations

from collections.abc import Iterator

from .models import GLOBAL_SCOPE, OptOut

# Store rows read per query (keyset pages of the primary key), and missing seqs written at once.
STORE_PAGE = 5000
FLUSH = 5000


class SinkMerge:
    """Feed a sink's full read page by page; `finish` leaves the missing seqs in temp.merge_missing.

    `scopes` are the topic keys the sink represents; a suppression of another topic is expected
    there as all-email when `unmapped_as_global`, and not at all otherwise (as missing_at_source).
    Both sides are compared as (address, scope) keys, the store's with the scope it is expected
    under at the sink.
    """

    def __init__(self, store, scopes: set[str], unmapped_as_global: bool):
        self._store = store
        self._scopes = set(scopes) | {GLOBAL_SCOPE}
        self._as_global = unmapped_as_global
        store.begin_merge_missing()
        self._expected = self._store_keys()
        self._current = next(self._expected, None)   # ((address, expected scope), seq) or None
        self._last: tuple[str, str] = ("", "")       # the sink's last key in order
        self._missing: list[int] = []
        self.in_order = 0
        self.out_of_order = 0

    def feed(self, optouts: list[OptOut]) -> None:
        """Merge one page of the sink's read; rows out of key order are kept for the temp table."""
        spilled, missing, expected = [], self._missing, self._expected
        current, last = self._current, self._last
        for optout in optouts:
            key = (optout.address, optout.scope)
            if key < last:
                spilled.append(optout)
                continue
            last = key
            while current is not None and current[0] < key:
                missing.append(current[1])           # stored, and the sink's read has passed it
                current = next(expected, None)
            while current is not None and current[0] == key:
                current = next(expected, None)       # held at the sink
        self._current, self._last = current, last
        self.in_order += len(optouts) - len(spilled)
        if spilled:
            self.out_of_order += len(spilled)
            self._store.add_to_source_set(spilled)
        if len(missing) >= FLUSH:
            self._flush()

    def finish(self) -> None:
        """Every stored suppression after the sink's last key is missing there."""
        while self._current is not None:
            self._missing.append(self._current[1])
            self._current = next(self._expected, None)
            if len(self._missing) >= FLUSH:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        if self._missing:
            self._store.add_merge_missing(self._missing)
            self._missing = []

    def _store_keys(self) -> Iterator[tuple[tuple[str, str], int]]:
        """The store's suppressions as ((address, expected scope), seq), in key order.

        Pages end at an address boundary, so that an address whose topics the sink holds as
        all-email can be re-sorted by its expected scopes within the page.
        """
        scopes, as_global = self._scopes, self._as_global
        for rows in self._store.suppression_keys(STORE_PAGE):
            keyed = [((address, scope if scope in scopes else GLOBAL_SCOPE), seq) for seq, address, scope in rows
                     if as_global or scope in scopes]
            if as_global:
                keyed.sort(key=_first)   # already in order unless a topic became all-email
            yield from keyed


def _first(item: tuple) -> tuple:
    return item[0]

"""A recipient's own re-subscribe: recorded with its evidence, honoured where it was made.

Only the person can take back their own opt-out, and only where they did it. A change
back to subscribed that an adapter reads (models.Resubscribe) releases the opt-out at
that adapter, so push and reconcile stop re-applying it there, when all of this holds:

- the vendor says the recipient made it (never an admin, an API client or an import);
- it is dated, and dated after every opt-out of that (address, scope) we know of (one dated at or
  before the opt-out is not even recorded: the opt-out overrode it);
- the opt-out is not a spam complaint, a hard bounce or anything else a system reported;
- the adapter's policy (`recipient_resubscribe`) is not `ignore`.

With policy `everywhere` the release is an audited lift instead (legal basis `consent`, the
evidence as its explanation), removed from the sinks where this daemon had put it, by
each sink's own push (`removals_due`). Anything else is recorded as an observation and
changes nothing. A newer dated opt-out of the same (address, scope), read from any
adapter, ends a release and asks for a reconcile of that adapter, so it is re-applied there.

Every function runs inside the caller's transaction (the page's, with its cursor) or
opens its own; none makes a vendor call. The SQL is the same on both backends (state/pg_store.py)
but for the spellings of state/sql_dialect.py (`store.dialect`); events are appended through the
store (`append_event`, `_append_events`: pg_events on PostgreSQL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .models import RECIPIENT, RESUBSCRIBE_POLICIES, OptOut, Resubscribe, utc_now

if TYPE_CHECKING:
    from .store import Store

NEVER_RELEASED = {"spam_complaint": "a spam complaint is never released",
                  "hard_bounce": "a hard bounce is never released"}


@dataclass(slots=True)
class ResubscribeCounts:
    """What one page's re-subscribes did."""

    released: int = 0   # released at the adapter (policy local)
    lifted: int = 0     # lifted everywhere (policy everywhere)
    refused: int = 0    # recorded as observations; the opt-out stays


def evidence_text(adapter: str, item: Resubscribe, when: str) -> str:
    """The evidence of a re-subscribe in words: the explanation of a lift it causes."""
    fields = ", ".join(f"{key}={value}" for key, value in sorted(item.evidence.items()) if value not in (None, ""))
    return f"re-subscribed at {adapter} by the recipient at {when}" + (f" ({fields})" if fields else "")


def record(store: Store, adapter: str, items: list[Resubscribe], policy: str, now: str,
           page_optouts: list[OptOut] = ()) -> ResubscribeCounts:
    """Record the re-subscribes one page of `adapter` brought; call inside the page's transaction.

    The page's opt-outs are staged already; they are given as read too (`page_optouts`), so that
    an opt-out of the same page dated after a re-subscribe keeps it from releasing anything.
    """
    if policy not in RESUBSCRIBE_POLICIES:
        raise ValueError(f"recipient_resubscribe must be one of {', '.join(RESUBSCRIBE_POLICIES)}, got {policy!r}")
    wanted = {(item.address, item.scope) for item in items}
    in_page: dict[tuple[str, str], str] = {}
    for optout in page_optouts:
        key = (optout.address, optout.scope)
        when = _canonical(optout.occurred_at) if key in wanted else None
        if when and when > in_page.get(key, ""):
            in_page[key] = when
    counts = ResubscribeCounts()
    for item in items:
        when = _canonical(item.occurred_at)
        optout = _current_optout(store, item.address, item.scope)
        if optout is None:
            continue  # never opted out here: a subscribe is none of our business
        if _seen_before(store, adapter, item, when):
            continue  # a repeat read (an overlap, a member read again): recorded once
        latest = _latest_optout_at(store, item.address, item.scope, optout, in_page.get((item.address, item.scope)))
        if when is not None and latest is not None and when <= latest:
            continue  # it happened before the opt-out: a subscribe the opt-out already overrode, not news
        refusal = _refusal(item, when, optout, policy)
        details = {**item.evidence, "resubscribe_by": item.by}
        if refusal:
            counts.refused += 1
            _event(store, now, "observed", item, adapter, when,
                   f"re-subscribe at {adapter} not honoured: {refusal}; the opt-out stays", details)
            continue
        seq = _event(store, now, "resubscribed", item, adapter, when,
                     f"re-subscribed at {adapter} by the recipient; "
                     + ("the opt-out is lifted everywhere (policy everywhere)" if policy == "everywhere"
                        else f"the opt-out is released at {adapter} only"), details)
        if policy == "everywhere":
            _lift(store, adapter, item, when, optout, seq, now)
            counts.lifted += 1
        else:
            store.conn.execute(
                "INSERT INTO releases (address, scope, adapter, resubscribed_at, released_at, seq)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address, scope, adapter) DO UPDATE SET"
                " resubscribed_at = excluded.resubscribed_at, released_at = excluded.released_at, seq = excluded.seq",
                (item.address, item.scope, adapter, when, now, seq))
            counts.released += 1
    return counts


def end_releases(store: Store, table: str, source: str, now: str) -> int:
    """End releases that a newer dated opt-out in `table` (incoming or source_set) overrides.

    The released adapter is asked to reconcile, which re-applies the opt-out there. How many ended.
    """
    # Ordered, so that the events come in the same order on every backend.
    rows = store.conn.execute(
        f"SELECT r.address, r.scope, r.adapter, max(n.occurred_at) FROM releases r JOIN {table} n"
        " ON n.address = r.address AND n.scope = r.scope WHERE n.occurred_at > r.resubscribed_at"
        " GROUP BY r.address, r.scope, r.adapter ORDER BY r.address, r.scope, r.adapter").fetchall()
    for address, scope, released_at, occurred_at in rows:
        store._append_events(
            ("recorded_at", "kind", "address", "scope", "source", "target", "occurred_at", "message"),
            [(now, "release_ended", address, scope, source, released_at, occurred_at,
              f"a newer opt-out seen at {source} ends the release at {released_at}; it is re-applied there")])
        store.conn.execute("DELETE FROM releases WHERE address = ? AND scope = ? AND adapter = ?",
                           (address, scope, released_at))
        store._ensure_checkpoint(released_at)
        store.conn.execute("UPDATE checkpoints SET reconcile_requested = 1 WHERE adapter = ?", (released_at,))
    return len(rows)


def releases_of(store: Store, address: str, scope: str) -> list[str]:
    """The adapters where the opt-out of (address, scope) is released, by name."""
    return [row[0] for row in store.conn.execute(
        "SELECT adapter FROM releases WHERE address = ? AND scope = ? ORDER BY adapter", (address, scope))]


def release_counts(store: Store) -> dict[str, int]:
    """How many opt-outs are released at each adapter."""
    return dict(store.conn.execute("SELECT adapter, count(*) FROM releases GROUP BY adapter"))


def removals_due(store: Store, adapter: str) -> list[tuple[int, OptOut]]:
    """The opt-outs a re-subscribe lifted everywhere that this sink still has to remove: (lift seq, opt-out)."""
    return [(seq, OptOut(address, scope, reason, origin)) for seq, address, scope, reason, origin in store.conn.execute(
        "SELECT e.seq, e.address, e.scope, e.reason, e.origin FROM removals_due d JOIN events e ON e.seq = d.lift_seq"
        " WHERE d.adapter = ? ORDER BY d.lift_seq", (adapter,))]


def finish_removal(store: Store, adapter: str, lift_seq: int, optout: OptOut, ok: bool, message: str) -> None:
    """Record the outcome of removing a lifted opt-out at one sink; it is no longer due there."""
    with store.transaction():
        store._append_events(
            ("recorded_at", "kind", "address", "scope", "target", "ref_seq", "message"),
            [(utc_now(), "removed" if ok else "remove_failed", optout.address, optout.scope, adapter, lift_seq,
              message)])
        store.conn.execute("DELETE FROM removals_due WHERE adapter = ? AND lift_seq = ?", (adapter, lift_seq))


# -- the rules -------------------------------------------------------------------------


def _canonical(text: str | None) -> str | None:
    from .store import canonical_time  # the store's one time form; imported late (store imports this module)

    return canonical_time(text)


def _current_optout(store: Store, address: str, scope: str) -> dict | None:
    """The stored suppression, else an opt-out staged for it (not promoted yet): reason, origin, seq."""
    row = store.conn.execute("SELECT reason, origin, seq FROM suppressions WHERE address = ? AND scope = ?",
                             (address, scope)).fetchone()
    if row:
        return {"reason": row[0], "origin": row[1], "seq": row[2]}
    row = store.conn.execute("SELECT reason, origin FROM staged WHERE address = ? AND scope = ?"
                             f" ORDER BY {store.dialect.insertion_order()} DESC LIMIT 1", (address, scope)).fetchone()
    return {"reason": row[0], "origin": row[1], "seq": None} if row else None


def _latest_optout_at(store: Store, address: str, scope: str, optout: dict, in_page: str | None) -> str | None:
    """When the newest opt-out of (address, scope) we know of happened (or was recorded, if undated)."""
    candidates = [in_page]
    if optout["seq"] is not None:
        candidates.append(store.conn.execute(
            "SELECT max(COALESCE(occurred_at, recorded_at)) FROM events WHERE address = ? AND scope = ?"
            " AND kind IN ('suppressed', 'changed') AND seq >= ?", (address, scope, optout["seq"])).fetchone()[0])
    candidates.append(store.conn.execute(
        "SELECT max(COALESCE(occurred_at, staged_at)) FROM staged WHERE address = ? AND scope = ?",
        (address, scope)).fetchone()[0])
    dated = [c for c in candidates if c]
    return max(dated) if dated else None


def _refusal(item: Resubscribe, when: str | None, optout: dict, policy: str) -> str | None:
    """Why this re-subscribe (dated after the opt-out, or undated) releases nothing; None when it releases."""
    if policy == "ignore":
        return "recipient_resubscribe is 'ignore' for this adapter"
    if item.by != RECIPIENT:
        return f"made by {item.by}, not by the recipient"
    if when is None:
        return "the vendor does not date it"
    if optout["reason"] in NEVER_RELEASED:
        return NEVER_RELEASED[optout["reason"]]
    if optout["origin"] == "system":
        return f"a {optout['reason'].replace('_', ' ')} a system reported is never released"
    return None


def _seen_before(store: Store, adapter: str, item: Resubscribe, when: str | None) -> bool:
    d = store.dialect
    return store.conn.execute(
        f"SELECT 1 FROM events WHERE address = ? AND scope = ? AND source = ? AND {d.same('occurred_at', '?')}"
        f" AND kind IN ('resubscribed', 'observed') AND {d.json_text('details', 'resubscribe_by')} IS NOT NULL"
        " LIMIT 1", (item.address, item.scope, adapter, when)).fetchone() is not None


def _event(store: Store, now: str, kind: str, item: Resubscribe, adapter: str, when: str | None, message: str,
           details: dict) -> int:
    return store.append_event({
        "recorded_at": now, "kind": kind, "address": item.address, "scope": item.scope, "origin": item.by,
        "source": adapter, "occurred_at": when, "message": message,
        "details": json.dumps(details, separators=(",", ":"), sort_keys=True)})


def _lift(store: Store, adapter: str, item: Resubscribe, when: str, optout: dict, resubscribe_seq: int,
          now: str) -> None:
    """Lift the opt-out everywhere for the recipient: audited, and removed where this daemon had put it."""
    from .lifts import holders  # lifts imports the store module, which imports this one

    address, scope = item.address, item.scope
    _source, applied = holders(store, address, scope) if optout["seq"] is not None else (None, [])
    targets = [name for name in applied if name != adapter]  # where they re-subscribed, it is gone already
    source = store.conn.execute("SELECT source FROM suppressions WHERE address = ? AND scope = ?",
                                (address, scope)).fetchone()
    lift_seq = store.append_event({
        "recorded_at": now, "kind": "lifted", "address": address, "scope": scope, "reason": optout["reason"],
        "origin": optout["origin"], "source": source[0] if source else adapter, "legal_basis": "consent",
        "explanation": evidence_text(adapter, item, when),
        "message": f"lifted by the recipient's own re-subscribe at {adapter}",
        "details": json.dumps({"by": f"recipient re-subscribe at {adapter}", "resubscribe_seq": resubscribe_seq,
                               "propagate_to": targets}, separators=(",", ":"))})
    store.conn.execute("DELETE FROM suppressions WHERE address = ? AND scope = ?", (address, scope))
    store.conn.execute("DELETE FROM staged WHERE address = ? AND scope = ?", (address, scope))
    store.conn.execute("DELETE FROM releases WHERE address = ? AND scope = ?", (address, scope))
    # Lifted as of the re-subscribe: an opt-out dated after it is the person's newer wish and counts again.
    store.conn.execute(
        "INSERT INTO lifts (address, scope, lifted_at, seq) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (address, scope) DO UPDATE SET"
        f" lifted_at = {store.dialect.greatest('lifts.lifted_at', 'excluded.lifted_at')}, seq = excluded.seq",
        (address, scope, when, lift_seq))
    store.conn.executemany(store.dialect.insert_or_ignore("removals_due (adapter, lift_seq, due_at) VALUES (?, ?, ?)"),
                           [(name, lift_seq, now) for name in targets])


"""The audited lift: the only way a suppression ever leaves the store.

Allowed only for opt-outs a user made; refused for the recipient's own and for
anything a system reported (bounces, spam complaints). The lift is recorded
with its legal basis, and blocks older observations from re-creating it.
"""

from __future__ import annotations

import json

from .errors import InputError, RefusedError
from .models import utc_now
from .store import Store

LEGAL_BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task",
               "legitimate_interest")


def lift_refusal(row: dict) -> str | None:
    """Why a stored suppression may not be lifted, or None when a user may lift it."""
    if row["reason"] == "spam_complaint":
        return "it is a spam complaint; spam complaints are never lifted"
    if row["origin"] == "recipient":
        return "the recipient made it; only the recipient can undo it"
    if row["origin"] == "system":
        return f"it is a {row['reason'].replace('_', ' ')} reported by a system, not a user's opt-out"
    return None


def lift(store: Store, address: str, scope: str, legal_basis: str, explanation: str, by: str) -> dict:
    """Remove one suppression and record the lift; the removed row. Refused rows stay untouched."""
    if legal_basis not in LEGAL_BASES:
        raise InputError(f"legal basis {legal_basis!r} is not one of {', '.join(LEGAL_BASES)}")
    if not explanation.strip():
        raise InputError("an explanation is required to lift an opt-out")
    with store.transaction():
        row = store.suppression(address, scope)
        if row is None:
            raise InputError(f"{address} has no opt-out for scope {scope!r}; nothing to lift")
        refusal = lift_refusal(row)
        if refusal:
            raise RefusedError(f"cannot lift the opt-out of {address} (scope {scope!r}): {refusal}")
        now = utc_now()
        seq = store.conn.execute(
            "INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source, legal_basis,"
            " explanation, message, details) VALUES (?, 'lifted', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, address, scope, row["reason"], row["origin"], row["source"], legal_basis, explanation,
             f"lifted by {by}", json.dumps({"by": by})),
        ).lastrowid
        store.conn.execute("DELETE FROM suppressions WHERE address = ? AND scope = ?", (address, scope))
        store.conn.execute("DELETE FROM staged WHERE address = ? AND scope = ?", (address, scope))
        # Releases were of this opt-out; a later one starts without them.
        store.conn.execute("DELETE FROM releases WHERE address = ? AND scope = ?", (address, scope))
        store.conn.execute(
            "INSERT INTO lifts (address, scope, lifted_at, seq) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (address, scope) DO UPDATE SET lifted_at = excluded.lifted_at, seq = excluded.seq",
            (address, scope, now, seq))
    return row


def holders(store: Store, address: str, scope: str) -> tuple[str | None, list[str]]:
    """Where an opt-out still is: the adapter it came from, and the sinks this daemon applied it to."""
    source = store.conn.execute(
        "SELECT source, seq FROM events WHERE address = ? AND scope = ? AND kind = 'suppressed'"
        " ORDER BY seq DESC LIMIT 1", (address, scope)).fetchone()
    # Only sinks where our apply took effect; a sink that already held it got it elsewhere.
    applied = {r[0] for r in store.conn.execute(
        "SELECT DISTINCT target FROM events WHERE address = ? AND scope = ? AND kind = 'applied'"
        f" AND target IS NOT NULL AND {store.dialect.json_text('details', 'outcome')} = 'applied'",
        (address, scope))}
    if source:
        # And sinks a send of it was made to by a process that died before recording the outcome.
        applied.update(r[0] for r in store.conn.execute("SELECT adapter FROM inflight WHERE seq = ?", (source[1],)))
    return (source[0] if source else None), sorted(applied)


def record_removal(store: Store, address: str, scope: str, target: str, ok: bool, message: str) -> None:
    """Record the outcome of removing a lifted opt-out at one sink."""
    with store.transaction():
        store.conn.execute(
            "INSERT INTO events (recorded_at, kind, address, scope, target, message) VALUES (?, ?, ?, ?, ?, ?)",
            (utc_now(), "removed" if ok else "remove_failed", address, scope, target, message))

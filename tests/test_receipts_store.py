"""The webhook receipts table (state/receipts.py): found in chunks whatever their number; pruned by
prefix, or all of them when no prefix is given. Written for mutants a mutation run left alive."""

from __future__ import annotations

from state import receipts
from state.store import Store

OLD, NEW, CUT = "2026-01-01T00:00:00.000000+00:00", "2026-03-01T00:00:00.000000+00:00", "2026-02-01T00:00:00.000000+00:00"


def test_known_finds_every_received_key_beyond_several_chunks(tmp_path):
    keys = [f"e:{i}" for i in range(1200)]  # more than two chunks of 500
    with Store(tmp_path / "store.db") as store:
        with store.transaction():
            receipts.remember(store, "esp", keys[::2], OLD)
            receipts.remember(store, "other", keys[1::2], OLD)
        assert receipts.known(store, "esp", keys + keys[:3]) == set(keys[::2])


def test_prune_without_a_prefix_forgets_every_old_receipt(tmp_path):
    with Store(tmp_path / "store.db") as store:
        with store.transaction():
            receipts.remember(store, "esp", ["e:1", "n:abc"], OLD)
            receipts.remember(store, "esp", ["e:2"], NEW)
        assert receipts.prune(store, CUT, "n:") == 1
        assert receipts.known(store, "esp", ["e:1", "n:abc", "e:2"]) == {"e:1", "e:2"}
        assert receipts.prune(store, CUT) == 1
        assert receipts.known(store, "esp", ["e:1", "e:2"]) == {"e:2"}

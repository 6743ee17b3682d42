"""A reconcile's source set on PostgreSQL is analyzed before it is joined with the suppressions.

Autovacuum never analyzes a temp table, so without an ANALYZE the planner guesses its size: the
join that looks for stronger reasons took 3.4 s for 200,000 rows (0.27 s analyzed), and the source
side of the 1M reconcile bench 41 s (12 s on SQLite). The planner's statistics are the outcome.
"""

from __future__ import annotations

import pytest

from state.models import OptOut
from state.pg_store import PgStore

pytestmark = pytest.mark.postgresql


def test_the_source_set_has_statistics_when_it_is_joined(pg_url):
    store = PgStore(pg_url)
    try:
        store.begin_source_set()
        store.add_to_source_set([OptOut(f"p{i:05d}@example.com") for i in range(3000)])
        assert store.stage_from_source_set("inbox").staged == 3000
        tuples, analyzed = store.raw.execute(
            "SELECT c.reltuples, s.last_analyze IS NOT NULL FROM pg_class c JOIN pg_stat_user_tables s"
            " ON s.relid = c.oid WHERE c.relname = 'source_set' AND c.relpersistence = 't'"
            " AND pg_table_is_visible(c.oid)").fetchone()
        assert (tuples, analyzed) == (3000, True)
    finally:
        store.close()

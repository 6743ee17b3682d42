"""The PostgreSQL fixtures (imported by tests/conftest.py): one throwaway cluster per session, a fresh
database per test.

The cluster starts only when a test asks for `pg_cluster` or `pg_url`, and the session's other tests
never pay for it. When it cannot start, every test that needs it fails with one line saying what is
missing and how to install it: a PostgreSQL test is never skipped.
"""

from __future__ import annotations

import uuid

import pytest

from . import pg_cluster as clusters


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        pytest.fail(f"psycopg 3 cannot be imported ({exc}); install the project with its dependencies: "
                    ".venv/bin/pip install -e '.[test]' (tests/run does)", pytrace=False)
    return psycopg


@pytest.fixture(scope="session")
def pg_cluster():
    """A running throwaway cluster (tests/pg_cluster.py) for the whole session; its `url()` connects."""
    try:
        cluster = clusters.start()
    except clusters.ClusterError as exc:
        pytest.fail(f"the PostgreSQL test cluster cannot start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster):
    """The URL of a new, empty database in the session's cluster, dropped after the test."""
    psycopg = _psycopg()
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        # FORCE: a connection the test left open (or a killed subprocess's) must not keep it.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

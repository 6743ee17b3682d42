"""The PostgreSQL fixtures (imported by tests/conftest.py): one throwaway cluster per session, a fresh
database per test.

The cluster starts only when a test asks for `pg_cluster` or `pg_url`, and the session's other tests
never pay for it. When it cannot start, every test that needs it fails with one line saying what is
missing and how to install it: a PostgreSQL test is never skipped.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack, contextmanager

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


@contextmanager
def new_database(cluster):
    """The URL of a new, empty database in `cluster`, dropped on leaving."""
    psycopg = _psycopg()
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield cluster.url(name)
    finally:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            # FORCE: a connection the test left open (or a killed subprocess's) must not keep it.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_cluster):
    """The URL of a new, empty database in the session's cluster, dropped after the test."""
    with new_database(pg_cluster) as url:
        yield url


@pytest.fixture
def pg_urls(pg_cluster):
    """A maker of new, empty databases' URLs, one per call, all dropped after the test (a crash sweep's)."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(new_database(pg_cluster))

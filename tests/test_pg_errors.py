"""PostgreSQL errors never show the store URL's password (state/pg_errors.py, connector/leases.py)."""

from __future__ import annotations

import pytest

from connector.leases import PgLeases
from state.errors import StoreError
from state.pg_errors import BAD_URL, describe, secrets_of


def test_the_password_is_found_in_every_form_a_url_can_hold_it():
    assert secrets_of("postgresql://u:pa%40ss@db/x") == ["pa%40ss", "pa@ss"]
    assert secrets_of("postgresql://u@db/x?password=pw%21&sslmode=require") == ["pw%21", "pw!"]
    assert secrets_of("host=db password=kw user=u") == ["kw"]
    assert secrets_of("postgresql://u@db/x") == []


def test_an_error_quoting_the_password_shows_stars():
    error = RuntimeError('invalid percent-encoded token: "pa%zzss"\nsecond line pa%zzss')
    assert describe(error, "postgresql://u:pa%zzss@db/x") == 'invalid percent-encoded token: "***"'


@pytest.mark.parametrize("url", [
    "postgresql://u:s3cret%zzpw@/db",                 # libpq quotes the bad token
    "u:s3cretpw@host",                                # not a URL: libpq quotes the string
    "host=/nonexistent password=s3cretpw sslmode=bad",
    "postgresql://u:s3cretpw@127.0.0.1:1/db",          # nobody listens
])
def test_leases_on_a_bad_or_unreachable_url_say_so_without_the_password(url):
    for call in (lambda leases: leases.try_acquire("hubspot"), lambda leases: leases.holders()):
        with pytest.raises(StoreError) as caught:
            call(PgLeases(url, connect_timeout=2))
        message = str(caught.value)
        assert "s3cret" not in message
        assert message == BAD_URL or message.startswith("cannot connect to the store's PostgreSQL")

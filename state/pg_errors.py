"""PostgreSQL errors as one line that never shows the store URL's password."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

BAD_URL = ("the store's PostgreSQL URL cannot be read (expected postgresql://user@host:port/dbname?...); "
           "it is not shown, as it may hold a password")


def secrets_of(url: str) -> list[str]:
    """The password in a libpq URL or key=value string, as written and decoded; [] if none."""
    found: list[str] = []
    try:
        password = urlsplit(url).password if "://" in url else None
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]
    for word in url.replace("&", " ").replace("?", " ").split():
        if word.startswith("password="):
            found += [word[len("password="):], unquote(word[len("password="):])]
    return sorted({s for s in found if s}, key=len, reverse=True)


def describe(exc: BaseException, url: str) -> str:
    """The first line of a psycopg error, with the URL's password replaced by ***."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    for secret in secrets_of(url):
        line = line.replace(secret, "***")
    return line

"""Test-only crash points: the process kills itself with SIGKILL at a chosen store commit.

The crash tests (tests/faults/test_crash_points.py, docs/testing.md) set the environment variable
OPTOUT_SYNC_FAILPOINT to sweep a kill across every commit boundary of a cycle, instead of hoping a
random kill lands in the few microseconds between two commits:

    commit:N      SIGKILL right after the process's N-th top-level COMMIT (it is durable)
    precommit:N   SIGKILL right before the N-th COMMIT (its writes are lost, the vendor calls made
                  since the previous commit are not)

It is read once, at import; unset, the store pays one test of a module constant per commit. It is
not a setting: the settings loader skips this variable and the settings file cannot name it.
"""

from __future__ import annotations

import itertools
import os
import signal

ENV = "OPTOUT_SYNC_FAILPOINT"
WHEN = ("commit", "precommit")


def _parse(text: str | None) -> tuple[str | None, int, str | None]:
    """(when, n, error) from the variable's value; when is None if unset or malformed."""
    if not text:
        return None, 0, None
    when, _, number = text.strip().partition(":")
    if when in WHEN and number.isdigit() and int(number) >= 1:
        return when, int(number), None
    return None, 0, (f"environment variable {ENV}={text!r} is not 'commit:N' or 'precommit:N' "
                     "with N >= 1 (a test-only crash point; unset it)")


WHEN_ARMED, AT, ERROR = _parse(os.environ.get(ENV))
ARMED = WHEN_ARMED is not None
# next() on itertools.count is atomic under the GIL: the daemon's threads share one numbering.
_commits = itertools.count(1)


def before_commit() -> int:
    """The number of the top-level COMMIT about to run; kills the process at the armed 'precommit'."""
    number = next(_commits)
    if WHEN_ARMED == "precommit" and number == AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return number


def after_commit(number: int) -> None:
    """Kills the process after the armed COMMIT ('commit:N')."""
    if WHEN_ARMED == "commit" and number == AT:
        os.kill(os.getpid(), signal.SIGKILL)

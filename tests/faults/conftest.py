"""Hands the fault suite's figures to pytest's terminal summary, so a normal run shows them.

Under pytest-xdist (tests/run runs the suite on two workers) a test runs in a worker process: its
figures travel to the controller in the test report's user_properties, and tests/conftest.py (which
the controller loads; it never loads this folder's conftest) collects and prints them.
"""

from __future__ import annotations

import pytest

from .figures import FIGURES, REPORT_KEY


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Attach the figures a test records to it (its report carries them to the controller)."""
    before = dict(FIGURES)
    yield
    item.user_properties.extend((REPORT_KEY, [title, lines]) for title, lines in FIGURES.items()
                                if before.get(title) is not lines)

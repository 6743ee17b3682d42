"""Prints the fault suite's figures in pytest's terminal summary, so a normal run shows them.

Under pytest-xdist (tests/run runs the suite on two workers) a test runs in a worker process: its
figures travel to the controller in the test report's user_properties, and the controller prints them.
"""

from __future__ import annotations

import pytest

from .figures import FIGURES

_KEY = "fault-injection figure"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Attach the figures a test records to it (its report carries them to the controller)."""
    before = dict(FIGURES)
    yield
    item.user_properties.extend((_KEY, [title, lines]) for title, lines in FIGURES.items()
                                if before.get(title) is not lines)


def pytest_runtest_logreport(report):
    """Collect the figures of a report, wherever the test ran (here or in an xdist worker)."""
    for key, value in getattr(report, "user_properties", ()):
        if key == _KEY:
            FIGURES[value[0]] = value[1]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One section with every figure measured in this session."""
    if not FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for title, lines in FIGURES.items():
        terminalreporter.write_line(title)
        for line in lines:
            terminalreporter.write_line(f"    {line}")

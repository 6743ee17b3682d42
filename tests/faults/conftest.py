"""Prints the fault suite's figures in pytest's terminal summary, so a normal run shows them."""

from __future__ import annotations

from .figures import FIGURES


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One section with every figure measured in this session."""
    if not FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for title, lines in FIGURES.items():
        terminalreporter.write_line(title)
        for line in lines:
            terminalreporter.write_line(f"    {line}")

"""The figures the fault suite measures: each test records its lines here as it prints them.

tests/faults/conftest.py prints them all again in pytest's terminal summary, so they show in a normal run.
"""

from __future__ import annotations

FIGURES: dict[str, list[str]] = {}
# The user_properties key under which a test's report carries its figures (tests/faults/conftest.py).
REPORT_KEY = "fault-injection figure"


def report(title: str, lines: list[str]) -> None:
    """Record a figure and print it at once (visible with `pytest -s`)."""
    FIGURES[title] = lines
    print(f"\n== {title}")
    for line in lines:
        print(f"   {line}")

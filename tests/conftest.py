"""Shared fixtures: settings files written to tmp_path, stores, engines with in-memory adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from connector.engine import Engine
from connector.settings import Settings, validate_settings
from state.store import Store

from . import memory_adapter
from .pg_fixtures import pg_cluster, pg_url, pg_urls  # noqa: F401  (fixtures: a throwaway PostgreSQL)
from .store_fixtures import any_store  # noqa: F401  (fixture: a store of either backend)
from .backend_fixtures import fresh_backends, store_backend  # noqa: F401  (fixtures: either backend's [store])


def pytest_collection_modifyitems(config, items):
    """Under a mutation run, run a mutant's tests fastest first, and property tests with fewer examples.

    mutmut runs each mutant with `-x`, so the first failing test ends it: ordered by the durations mutmut
    recorded, a killed mutant costs its fastest killing test rather than whichever related test pytest
    happened to collect first. Outside a mutation run the order is untouched.
    """
    stats = Path("mutmut-stats.json")
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", "") or not stats.is_file():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
    # A quarter of each property test's examples (at least 20): a surviving mutant runs every test
    # that reaches its function, and the property tests were a third to a half of it. Hypothesis reads the
    # settings off the test when it runs, so this forked child alone runs fewer.
    from hypothesis import settings as hypothesis_settings

    for item in items:
        test = getattr(item, "obj", None)
        current = getattr(test, "_hypothesis_internal_use_settings", None)
        if current is not None and current.max_examples > 20:
            test._hypothesis_internal_use_settings = hypothesis_settings(
                current, max_examples=max(20, current.max_examples // 4))


def pytest_runtest_logreport(report):
    """Collect the fault suite's figures from a report, wherever the test ran (here or in an xdist worker)."""
    from .faults.figures import FIGURES, REPORT_KEY

    for key, value in getattr(report, "user_properties", ()):
        if key == REPORT_KEY:
            FIGURES[value[0]] = value[1]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One section with every fault-suite figure measured in this session."""
    from .faults.figures import FIGURES

    if not FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for title, lines in FIGURES.items():
        terminalreporter.write_line(title)
        for line in lines:
            terminalreporter.write_line(f"    {line}")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_settings(folder: Path, adapters: list[dict], topics: dict | None = None, **sections) -> Path:
    """Write a settings.toml in `folder` and return its path."""
    lines = []
    sections.setdefault("store", {"path": "store.db"})
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    lines.append("[topics]")
    lines += [f"{key} = {toml_value(value)}" for key, value in (topics or {}).items()]
    for adapter in adapters:
        lines.append("[[adapters]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in adapter.items()]
    path = folder / "settings.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _fresh_vendors():
    memory_adapter.VENDORS.clear()
    yield
    memory_adapter.VENDORS.clear()


@pytest.fixture
def memory_world(tmp_path):
    """Build (settings, store, engine, vendors) for in-memory adapters described as dicts."""
    opened: list[Store] = []

    def build(adapters: list[dict], topics: dict | None = None, **sync) -> tuple[Settings, Store, Engine, dict]:
        raw = {"store": {"path": str(tmp_path / "store.db")}, "topics": topics or {},
               "sync": sync, "adapters": [{"type": "memory", "interval": 1, **a} for a in adapters]}
        settings = validate_settings(raw, tmp_path / "settings.toml")
        store = Store(settings.store.path)
        opened.append(store)
        from adapters import registry
        built = {a.name: registry.build(a, settings.topics) for a in settings.adapters}
        return settings, store, Engine(settings, store, built), built

    yield build
    for store in opened:
        store.close()

"""What the daemon logs per cycle: an idle cycle at debug level, and a paused adapter warned about when it
pauses and then at most hourly. The daemon's own cycle step is driven in-process, with its clock controlled."""

from __future__ import annotations

import logging

import pytest

from adapters import registry
from connector import daemon as daemon_module
from connector.commands import log_report
from connector.daemon import PAUSED_WARN_EVERY, Daemon
from connector.engine import CycleReport, Engine
from connector.logs import LOGGER_NAME
from connector.settings import validate_settings
from state.errors import TransientError
from state.models import OptOut
from state.store import Store

from . import memory_adapter


class Captured(logging.Handler):
    """Every record the project's logger emits, whatever its level."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[tuple[str, int, dict]]:
        taken = [(r.getMessage(), r.levelno, getattr(r, "fields", {})) for r in self.records]
        self.records.clear()
        return taken


@pytest.fixture
def logs():
    logger = logging.getLogger(LOGGER_NAME)
    handler, level = Captured(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def driven(tmp_path, monkeypatch):
    """A Daemon (not started) over two memory adapters, and a function running one worker cycle of one of them."""
    settings = validate_settings({
        "store": {"path": str(tmp_path / "store.db")},
        "adapters": [{"name": "src", "type": "memory", "interval": 60, "max_new_per_cycle": 2},
                     {"name": "sink", "type": "memory", "interval": 60}]}, tmp_path / "settings.toml")
    clock = Clock()
    monkeypatch.setattr(daemon_module, "time", clock)
    daemon = Daemon(settings)
    stores = {name: Store(settings.store.path) for name in ("src", "sink")}
    adapters = {name: registry.build(settings.adapter(name), settings.topics) for name in ("src", "sink")}

    def cycle(name: str, push_only: bool = False) -> bool:
        engine = Engine(settings, stores[name], {name: adapters[name]}, daemon.stop, daemon._notify)
        return daemon._cycle(engine, name, push_only=push_only)

    yield daemon, cycle, adapters, stores, clock
    for store in stores.values():
        store.close()


def cycle_levels(records) -> list[tuple[str, int]]:
    return [(fields["adapter"], level) for event, level, fields in records if event in ("cycle", "push")]


def test_an_idle_cycle_logs_at_debug_and_any_work_or_error_at_info_or_error(driven, logs):
    daemon, cycle, adapters, stores, clock = driven
    cycle("src")
    cycle("sink")
    assert cycle_levels(logs.take()) == [("src", logging.DEBUG), ("sink", logging.DEBUG)]

    adapters["src"].opt_out(OptOut("x@example.com"))
    cycle("src")                                     # pulled and added one
    cycle("sink", push_only=True)                    # woken: pushed one
    assert cycle_levels(logs.take()) == [("src", logging.INFO), ("sink", logging.INFO)]
    assert ("x@example.com", "*") in adapters["sink"].held

    cycle("src")
    cycle("sink")
    assert cycle_levels(logs.take()) == [("src", logging.DEBUG), ("sink", logging.DEBUG)]

    adapters["src"].read_error = TransientError("vendor down")
    cycle("src")
    records = logs.take()
    assert cycle_levels(records) == [("src", logging.ERROR)]
    assert records[0][2]["error"] == "vendor down"


@pytest.mark.parametrize("counts", [dict(rejected=1), dict(failed=1), dict(parked=1), dict(skipped=1),
                                    dict(changed=1), dict(notes=["a note"])])
def test_a_cycle_that_did_anything_at_all_stays_at_info(logs, counts):
    log_report(CycleReport("a", **counts))
    assert [(event, level) for event, level, _ in logs.take()][0] == ("cycle", logging.INFO)
    log_report(CycleReport("a", paused=True, waiting_approval=3))     # idle, and paused: the caller warns
    assert [(event, level) for event, level, _ in logs.take()] == [("cycle", logging.DEBUG),
                                                                   ("guard_paused", logging.WARNING)]
    log_report(CycleReport("a", paused=True, waiting_approval=3), warn_paused=False)
    assert [(event, level) for event, level, _ in logs.take()] == [("cycle", logging.DEBUG)]


def test_a_paused_adapter_is_warned_about_when_it_pauses_then_at_most_hourly(driven, logs):
    daemon, cycle, adapters, stores, clock = driven
    for i in range(3):                               # 3 new opt-outs > max_new_per_cycle = 2
        adapters["src"].opt_out(OptOut(f"u{i}@example.com"))

    def warnings() -> list[dict]:
        return [fields for event, level, fields in logs.take() if event == "guard_paused" and level == logging.WARNING]

    cycle("src")
    assert [w["staged"] for w in warnings()] == [3]
    assert stores["src"].checkpoint("src").paused

    for i in range(5):                               # every 5 s for a while: no more warnings
        clock.now += 5
        cycle("src")
        # The paused source is still a sink: woken, it pushes what another adapter added.
        adapters["sink"].opt_out(OptOut(f"s{i}@example.com"))
        cycle("sink")
        cycle("src", push_only=True)
    records = logs.take()
    assert not [r for r in records if r[0] == "guard_paused"]
    assert [level for event, level, f in records if event == "cycle" and f["adapter"] == "src"] == [logging.DEBUG] * 5
    assert [level for event, level, f in records if event == "push"] == [logging.INFO] * 5
    assert ("s4@example.com", "*") in adapters["src"].held

    clock.now += PAUSED_WARN_EVERY - 5 * 5 - 1      # just under an hour after the first warning
    cycle("src")
    assert warnings() == []
    clock.now += 1                                   # an hour after it
    cycle("src")
    assert [w["staged"] for w in warnings()] == [3]
    clock.now += 60
    cycle("src")
    assert warnings() == []

    Engine(daemon.settings, stores["src"], {}).approve("src", 3)
    cycle("src")
    assert warnings() == []
    for i in range(3, 6):                            # a new pause is news at once
        adapters["src"].opt_out(OptOut(f"u{i}@example.com"))
    clock.now += 1
    cycle("src")
    assert [w["staged"] for w in warnings()] == [3]

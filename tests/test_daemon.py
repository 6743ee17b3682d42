"""The daemon loop in-process: a hung or failing adapter delays nobody, and stop is prompt."""

from __future__ import annotations

import threading
import time
from typing import Literal

from connector.daemon import Daemon
from connector.settings import validate_settings
from state.errors import TransientError
from state.models import OptOut

from . import memory_adapter
from .process import wait_for


class HungSettings(memory_adapter.MemorySettings):
    type: Literal["hung"] = "hung"


class HungAdapter(memory_adapter.MemoryAdapter):
    """Blocks in read_changes until released, like a vendor that never answers."""

    settings_model = HungSettings

    release = threading.Event()

    def read_changes(self, cursor):
        self.release.wait(30)
        return iter([])


memory_adapter.registry.register("hung", HungAdapter)


def settings_for(tmp_path, adapters):
    raw = {"store": {"path": str(tmp_path / "store.db")},
           "adapters": [{"interval": 1, **a} for a in adapters]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    for adapter in settings.adapters:
        adapter.interval = 0.2  # below the settings' 1 s floor on purpose: in-process, to keep the test quick
    return settings


def run_in_thread(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    return thread, codes


def test_a_hung_and_a_failing_adapter_do_not_delay_the_others(tmp_path):
    HungAdapter.release.clear()
    settings = settings_for(tmp_path, [
        {"name": "slow", "type": "hung"},
        {"name": "broken", "type": "memory"},
        {"name": "a", "type": "memory"},
        {"name": "b", "type": "memory"},
    ])
    memory_adapter.VENDORS.clear()
    daemon = Daemon(settings, grace=1.0)
    thread, codes = run_in_thread(daemon)
    try:
        wait_for(lambda: "broken" in memory_adapter.VENDORS and "a" in memory_adapter.VENDORS)
        memory_adapter.VENDORS["broken"].read_error = TransientError("vendor down")
        memory_adapter.VENDORS["a"].opt_out(OptOut("x@example.com"))
        took = wait_for(lambda: "b" in memory_adapter.VENDORS
                        and ("x@example.com", "*") in memory_adapter.VENDORS["b"].held, timeout=5)
        assert took < 2.0
        # The hung adapter never finished a cycle, and the failing one is still tried.
        assert ("x@example.com", "*") in memory_adapter.VENDORS["broken"].held
    finally:
        started = time.monotonic()
        daemon.request_stop()
        thread.join(10)
        HungAdapter.release.set()
    assert codes == [0]
    assert time.monotonic() - started < 3.0       # the hung worker was abandoned after the grace

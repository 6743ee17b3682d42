"""Crash points: a kill between any two steps of a pull or a push loses nothing and invents nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.csv_folder import CsvFolderAdapter, CsvFolderSettings
from state.store import Store

INBOX = ("email,reason\n"
         "a@x.io,unsubscribed\n"
         "b@x.io,\n"
         "not-an-address,\n"
         "\n"
         "c@x.io,manual\n"
         "d@x.io,\n"
         "e@x.io,\n")
VALID = {"a@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io"}


def inbox(folder: Path, page_size: int = 2) -> CsvFolderAdapter:
    return CsvFolderAdapter(CsvFolderSettings(name="inbox", path=folder, settle_seconds=0,
                                              page_size=page_size), {})


def pull(store: Store, adapter: CsvFolderAdapter, kill_after: int | None = None) -> int:
    """Ingest pages from the saved cursor as the engine does; stop dead after `kill_after` pages."""
    pages = 0
    for page in adapter.read_changes(store.checkpoint("inbox").read_cursor):
        store.ingest_page("inbox", page)
        pages += 1
        if pages == kill_after:
            break  # the process dies here: nothing after the committed page happens
    return pages


def assert_exactly_the_file(store: Store) -> None:
    store.promote("inbox")
    assert {row[0] for row in store.iter_suppressions()} == VALID
    rejected = {f["location"] for f in store.failures("inbox")}
    assert rejected == {"a.csv row 4"}, rejected   # never row 1, the header


def test_a_kill_after_any_page_of_a_file_resumes_without_taking_the_header_as_data(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(INBOX)
    with Store(tmp_path / "count.db") as store:
        total = pull(store, inbox(tmp_path / "in"))
    assert total >= 3
    for kill_after in range(1, total + 1):
        with Store(tmp_path / f"store{kill_after}.db") as store:
            pull(store, inbox(tmp_path / "in"), kill_after)
            pull(store, inbox(tmp_path / "in"))          # a new process, from the saved cursor
            assert pull(store, inbox(tmp_path / "in")) == 0
            assert_exactly_the_file(store)


KILLED_PULL = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.test_crash_points import inbox
from state.store import Store
from pathlib import Path
store = Store({store!r})
pages = 0
for page in inbox(Path({folder!r})).read_changes(store.checkpoint("inbox").read_cursor):
    store.ingest_page("inbox", page)
    pages += 1
    if pages == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kill_after", [1, 2])
def test_a_process_killed_after_a_page_resumes_without_taking_the_header_as_data(tmp_path, kill_after):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(INBOX)
    script = KILLED_PULL.format(root=str(Path(__file__).parent.parent), store=str(tmp_path / "store.db"),
                                folder=str(tmp_path / "in"), kill_after=kill_after)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with Store(tmp_path / "store.db") as store:
        pull(store, inbox(tmp_path / "in"))
        assert_exactly_the_file(store)


# -- csv_file: stale temporary files and the file from the first cycle ------------------

from adapters.csv_file import CsvFileAdapter, CsvFileSettings  # noqa: E402
from connector.engine import Engine  # noqa: E402
from connector.settings import validate_settings  # noqa: E402

import fcntl  # noqa: E402


def test_a_sink_sweeps_only_its_own_stale_temporary_files_at_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ours = [out / ".suppressions.csv.k3j_x9a0.tmp", out / ".suppressions.csv.abcdefgh.tmp"]
    others = [out / ".other.csv.k3j_x9a0.tmp",            # another sink's, in the same folder
              out / ".suppressions.csv.k3j_x9a0.tmp.keep", out / "suppressions.csv.k3j_x9a0.tmp",
              out / ".suppressions.csv.k3j.tmp", out / ".suppressions.csv.x.k3j_x9a0.tmp", out / "notes.tmp"]
    live = out / ".suppressions.csv.livelive.tmp"         # a rewrite in progress elsewhere (a lift)
    for path in ours + others + [live]:
        path.write_text("email\nhalf@x.io\n")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        sink = CsvFileAdapter(CsvFileSettings(name="sink", path=out / "suppressions.csv"), {})
        assert all(p.exists() for p in ours)            # building the adapter (as `check` does) changes nothing
        sink.prepare()
    finally:
        os.close(holder)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others) and live.exists()
    assert (out / "suppressions.csv").read_text() == "email,scope,reason,origin,occurred_at\n"


def test_the_sink_file_exists_with_its_header_after_a_first_cycle_with_nothing_to_push(tmp_path):
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")}, "adapters": [
        {"name": "sink", "type": "csv_file", "path": str(tmp_path / "out" / "suppressions.csv")}]},
        tmp_path / "settings.toml")
    sink = CsvFileAdapter(settings.adapter("sink"), {})
    with Store(settings.store.path) as store:
        engine = Engine(settings, store, {"sink": sink})
        dry = engine.cycle("sink", dry_run=True)
        assert dry.error is None and not (tmp_path / "out").exists()   # a dry run creates nothing
        report = engine.cycle("sink")
    assert report.error is None and report.pushed == 0
    assert (tmp_path / "out" / "suppressions.csv").read_text() == "email,scope,reason,origin,occurred_at\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["suppressions.csv"]


# -- push: a kill between the vendor call and its record ------------------------------------

from connector import operator  # noqa: E402
from connector.commands import build_adapters, sync_once  # noqa: E402
from state.models import utc_now  # noqa: E402
from connector.settings import load_settings  # noqa: E402
from state.errors import PermanentError  # noqa: E402
from state.models import OptOut  # noqa: E402

from . import memory_adapter  # noqa: E402
from .conftest import write_settings  # noqa: E402


class ProcessDied(BaseException):
    """Stands for a SIGKILL: no handler in the engine runs, nothing after it is recorded."""


def memory_settings(tmp_path: Path):
    path = write_settings(tmp_path, [{"name": "crm", "type": "memory"}, {"name": "esp", "type": "memory"}])
    return load_settings(path, environ={})


def sync_dying_after_the_vendor_call(settings, sink: str) -> None:
    """One sync whose push to `sink` really applies at the vendor, then the process dies."""
    adapters = build_adapters(settings)
    really_apply = adapters[sink].apply

    def apply_then_die(batch):
        really_apply(batch)
        raise ProcessDied()

    adapters[sink].apply = apply_then_die
    with Store(settings.store.path) as store:
        with pytest.raises(ProcessDied):
            Engine(settings, store, adapters).sync_once()


def lift_everywhere(settings, address: str):
    return operator.lift(settings, address, scope="*", legal_basis="consent", explanation="asked us",
                         propagate=True)


def test_a_resend_after_a_kill_during_the_vendor_call_counts_as_our_apply_and_the_lift_reaches_it(tmp_path):
    settings = memory_settings(tmp_path)
    build_adapters(settings)["crm"].opt_out(OptOut("ann@x.io", "*", "manual", "user"))
    sync_dying_after_the_vendor_call(settings, "esp")
    esp = memory_adapter.VENDORS["esp"]
    assert ("ann@x.io", "*") in esp.held                        # the vendor has it; the store has no record

    sync_once(settings)                                          # the restarted daemon re-sends: "already"
    assert len(esp.apply_calls) == 2
    with Store(settings.store.path) as store:
        applied = [e for e in store.events_for("ann@x.io") if e["kind"] == "applied"]
        assert [(e["target"], json.loads(e["details"])["outcome"]) for e in applied] == [("esp", "applied")]
        assert store.conn.execute("SELECT count(*) FROM inflight").fetchone()[0] == 0

    outcome = lift_everywhere(settings, "ann@x.io")
    assert outcome.propagated == {"esp": "removed"}
    assert ("ann@x.io", "*") not in esp.held
    assert ("ann@x.io", "*") in memory_adapter.VENDORS["crm"].held   # the source is never touched


def test_a_lift_before_the_resend_still_reaches_the_sink_the_killed_push_wrote_to(tmp_path):
    settings = memory_settings(tmp_path)
    build_adapters(settings)["crm"].opt_out(OptOut("ann@x.io", "*", "manual", "user"))
    sync_dying_after_the_vendor_call(settings, "esp")
    outcome = lift_everywhere(settings, "ann@x.io")
    assert outcome.applied_at == ["esp"] and outcome.propagated == {"esp": "removed"}
    assert ("ann@x.io", "*") not in memory_adapter.VENDORS["esp"].held


def test_an_already_held_opt_out_is_still_not_ours_even_after_a_failed_call(tmp_path):
    settings = memory_settings(tmp_path)
    adapters = build_adapters(settings)
    adapters["crm"].opt_out(OptOut("ann@x.io", "*", "manual", "user"))
    adapters["esp"].held[("ann@x.io", "*")] = OptOut("ann@x.io")     # esp had it on its own
    adapters["esp"].raise_permanent = True                           # 401: the call fails, the process lives
    with Store(settings.store.path) as store:
        report = Engine(settings, store, adapters).sync_once()[1]
    assert isinstance(report.error, PermanentError)

    sync_once(settings)                                              # credentials fixed: "already"
    with Store(settings.store.path) as store:
        applied = [e for e in store.events_for("ann@x.io") if e["kind"] == "applied"]
        assert [json.loads(e["details"])["outcome"] for e in applied] == ["already"]
    outcome = lift_everywhere(settings, "ann@x.io")
    assert outcome.applied_at == [] and outcome.propagated == {}
    assert ("ann@x.io", "*") in memory_adapter.VENDORS["esp"].held   # not ours to remove


def test_a_reconcile_reapply_killed_after_the_vendor_call_is_ours_for_the_lift(tmp_path):
    settings = memory_settings(tmp_path)
    adapters = build_adapters(settings)
    adapters["crm"].opt_out(OptOut("ann@x.io", "*", "manual", "user"))
    adapters["esp"].held[("ann@x.io", "*")] = OptOut("ann@x.io")     # esp had it on its own at first
    sync_once(settings)
    esp = memory_adapter.VENDORS["esp"]
    del esp.held[("ann@x.io", "*")]                                  # drift: then it was gone there
    adapters = build_adapters(settings)
    really_apply = adapters["esp"].apply

    def apply_then_die(batch):
        really_apply(batch)
        raise ProcessDied()

    adapters["esp"].apply = apply_then_die
    with Store(settings.store.path) as store:
        with pytest.raises(ProcessDied):
            Engine(settings, store, adapters).reconcile("esp")        # our re-apply put it back
    assert ("ann@x.io", "*") in esp.held
    outcome = lift_everywhere(settings, "ann@x.io")
    assert outcome.propagated == {"esp": "removed"}
    assert ("ann@x.io", "*") not in esp.held


# -- csv_folder: a last line without its line end -----------------------------------------

def read_all_new(adapter: CsvFolderAdapter, cursor: str | None):
    optouts, rejected = [], []
    for page in adapter.read_changes(cursor):
        optouts += page.optouts
        rejected += page.rejected
        cursor = page.cursor
    return [o.address for o in optouts], rejected, cursor


@pytest.mark.parametrize("first, rest", [("ann@example.co", "m\n"), ("ann@exam", "ple.com\n")])
def test_a_last_line_completed_after_the_settle_time_is_read_again_complete(tmp_path, first, rest):
    adapter = inbox(tmp_path, page_size=100)
    path = tmp_path / "a.csv"
    path.write_text("email\nbob@x.io\n" + first)          # the writer pauses mid-line, past settle_seconds
    addresses, rejected, cursor = read_all_new(adapter, None)
    assert addresses[0] == "bob@x.io"
    assert read_all_new(adapter, cursor)[:2] == ([], [])   # nothing new while it stays as it is
    with path.open("a") as handle:
        handle.write(rest)
    addresses, rejected, cursor = read_all_new(inbox(tmp_path, page_size=100), cursor)
    assert addresses == ["ann@example.com"]                 # the completed row, not its tail
    assert [(r.where, r.value) for r in rejected] == [("a.csv row 3", first)]
    assert "read again" in rejected[0].reason and "unfinished" in rejected[0].reason
    assert read_all_new(adapter, cursor)[:2] == ([], [])


def test_a_last_line_never_completed_is_read_once(tmp_path):
    adapter = inbox(tmp_path, page_size=100)
    path = tmp_path / "a.csv"
    path.write_text("email\nann@example.com")
    addresses, rejected, cursor = read_all_new(adapter, None)
    assert (addresses, rejected) == (["ann@example.com"], [])
    for _ in range(3):
        addresses, rejected, cursor = read_all_new(inbox(tmp_path, page_size=100), cursor)
        assert (addresses, rejected) == ([], [])
    with path.open("a") as handle:
        handle.write("\nbob@x.io\n")                        # later: its line end and one more row
    addresses, rejected, cursor = read_all_new(adapter, cursor)
    assert (addresses, rejected) == (["bob@x.io"], [])


def test_an_unfinished_last_line_never_leaves_its_tail_as_a_rejected_row_in_the_store(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("email\nbob@x.io\nann@exam")
    with Store(tmp_path / "store.db") as store:
        pull(store, inbox(tmp_path))
        with path.open("a") as handle:
            handle.write("ple.com\n")
        pull(store, inbox(tmp_path))
        store.promote("inbox")
        assert {row[0] for row in store.iter_suppressions()} == {"bob@x.io", "ann@example.com"}
        assert not [f for f in store.failures("inbox") if "ple.com" in f["message"] and "ann@" not in f["message"]]


KILLED_PUSH = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from connector.commands import build_adapters
from connector.engine import Engine
from connector.settings import load_settings
from state.store import Store
settings = load_settings(Path({settings!r}), environ={{}})
adapters = build_adapters(settings)
really_apply = adapters["sink"].apply

def apply_then_die(batch):
    really_apply(batch)
    os.kill(os.getpid(), signal.SIGKILL)

adapters["sink"].apply = apply_then_die
with Store(settings.store.path) as store:
    Engine(settings, store, adapters).sync_once()
"""


def test_a_daemon_killed_between_the_sink_write_and_its_record_still_lifts_there(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("email\nann@x.io\n")
    path = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "in", "settle_seconds": 0},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv"}])
    script = KILLED_PUSH.format(root=str(Path(__file__).parent.parent), settings=str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    sink_file = tmp_path / "out" / "suppressions.csv"
    assert "ann@x.io" in sink_file.read_text()

    settings = load_settings(path, environ={})
    sync_once(settings)                                   # the restarted daemon: the file says "already"
    outcome = lift_everywhere(settings, "ann@x.io")
    assert outcome.propagated == {"sink": "removed"}
    assert sink_file.read_text() == "email,scope,reason,origin,occurred_at\n"


def test_a_read_back_of_a_write_whose_record_a_kill_lost_is_still_our_echo(tmp_path):
    """Pulls run before pushes: after a kill between the vendor call and its record, the sink's read-back
    of our write comes before the re-send. The in-flight mark makes it an echo, so a user's opt-out
    does not become the recipient's (which no one could lift)."""
    settings = memory_settings(tmp_path)
    build_adapters(settings)["crm"].opt_out(OptOut("ann@x.io", "*", "manual", "user"))
    sync_dying_after_the_vendor_call(settings, "esp")
    esp = memory_adapter.VENDORS["esp"]
    # esp reports what it holds in its own words, as some vendors do: a recipient unsubscribe, dated now.
    esp.log.append(OptOut("ann@x.io", "*", "manual", "recipient", occurred_at=utc_now()))

    sync_once(settings)

    with Store(settings.store.path) as store:
        row = store.suppression("ann@x.io")
        assert (row["reason"], row["origin"], row["source"]) == ("manual", "user", "crm")
        assert [e["kind"] for e in store.events_for("ann@x.io")] == ["suppressed", "applied"]
    assert lift_everywhere(settings, "ann@x.io").propagated == {"esp": "removed"}


def test_news_from_a_sink_with_a_write_in_flight_is_still_news(tmp_path):
    settings = memory_settings(tmp_path)
    build_adapters(settings)["crm"].opt_out(OptOut("ann@x.io", "*", "manual", "user"))
    sync_dying_after_the_vendor_call(settings, "esp")
    memory_adapter.VENDORS["esp"].log.append(OptOut("ann@x.io", "*", "spam_complaint", "system"))

    sync_once(settings)

    with Store(settings.store.path) as store:
        row = store.suppression("ann@x.io")
        assert (row["reason"], row["origin"]) == ("spam_complaint", "system")

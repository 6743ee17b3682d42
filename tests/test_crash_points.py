"""Crash points: a kill between any two steps of a pull or a push loses nothing and invents nothing."""

from __future__ import annotations

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

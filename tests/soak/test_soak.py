"""Soak: the real daemon under steady load for a long time; nothing may grow without bound.

Run it on purpose (it is marked `slow` and left out of the default run):

    OPTOUT_SYNC_SOAK_SECONDS=1800 .venv/bin/python -m pytest -m slow tests/soak -s

A writer appends rows to a `csv_folder` inbox steadily (a new file every minute), a `csv_file`
sink receives them. Every few seconds the test samples the daemon's resident memory
(/proc/PID/status VmRSS), the store's WAL size, its open file descriptors (/proc/PID/fd) and its
threads (/proc/PID/status Threads), prints them as a table, and asserts, after a warm-up:

- RSS: the last third's maximum is at most the first third's maximum + 20 % (at least + 8 MiB:
  the sink's set, and so its rewrite buffer, grows with every row written);
- WAL: never above the 64 MiB journal size limit, and the last third's maximum at most
  1.5 x the first third's + 1 MiB or 20 MiB, whichever is larger (it saw-tooths between idle
  truncations above 4 MiB and auto-checkpoints every 1000 pages of 16 KiB);
- threads: the last third's maximum is at most the first third's (exactly bounded);
- open fds: the last third's maximum is at most the first third's + 4 (a sink's temporary file and
  the identity check's short read-only connection, with its -wal and -shm, come and go);

and that every row written reached the store and the sink.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ..conftest import write_settings
from ..process import Daemon, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SECONDS = float(os.environ.get("OPTOUT_SYNC_SOAK_SECONDS", "1800"))
SAMPLE_EVERY = float(os.environ.get("OPTOUT_SYNC_SOAK_SAMPLE_SECONDS", "5"))
ROWS_PER_SECOND = 20
NEW_FILE_EVERY = 60.0
WAL_LIMIT = 64 * 1024 * 1024


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def sample(pid: int, wal: Path, store: Path, started: float, written: int) -> dict:
    status = proc_status(pid)
    conn = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        stored = conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]
    finally:
        conn.close()
    return {"t_s": round(time.monotonic() - started), "written": written, "stored": stored,
            "rss_kib": int(status["VmRSS"].split()[0]), "wal_kib": (wal.stat().st_size if wal.exists() else 0) // 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"])}


def table(samples: list[dict]) -> str:
    keys = list(samples[0])
    lines = ["  ".join(f"{k:>9}" for k in keys)]
    lines += ["  ".join(f"{s[k]:>9}" for k in keys) for s in samples]
    return "\n".join(lines)


def thirds(samples: list[dict], key: str) -> tuple[int, int]:
    third = max(1, len(samples) // 3)
    return max(s[key] for s in samples[:third]), max(s[key] for s in samples[-third:])


def test_the_daemon_stays_flat_under_steady_load(tmp_path, capsys, monkeypatch):
    # The daemon would read OPTOUT_SYNC_* variables as settings overrides (and refuse these two).
    monkeypatch.delenv("OPTOUT_SYNC_SOAK_SECONDS", raising=False)
    monkeypatch.delenv("OPTOUT_SYNC_SOAK_SAMPLE_SECONDS", raising=False)
    settings = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.5,
         "max_new_per_cycle": 1_000_000},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": 1},
    ], store={"path": "data/store.db"})
    inbox, store = tmp_path / "inbox", tmp_path / "data" / "store.db"
    wal = store.with_name(store.name + "-wal")
    inbox.mkdir()
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        """Append ROWS_PER_SECOND rows a second, a new file every NEW_FILE_EVERY seconds."""
        file_started, path = 0.0, None
        while not stop.is_set():
            now = time.monotonic()
            if path is None or now - file_started >= NEW_FILE_EVERY:
                path, file_started = inbox / f"list-{written[0]:08d}.csv", now
                path.write_text("email,reason\n")
            with path.open("a") as handle:
                for _ in range(ROWS_PER_SECOND):
                    handle.write(f"soak{written[0]}@example.com,unsubscribed\n")
                    written[0] += 1
            stop.wait(1.0)

    samples: list[dict] = []
    with Daemon(settings) as daemon:
        wait_for(lambda: store.exists() and "started" in daemon.log())
        thread = threading.Thread(target=writer, daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            while time.monotonic() - started < SECONDS:
                time.sleep(SAMPLE_EVERY)
                samples.append(sample(daemon.proc.pid, wal, store, started, written[0]))
                assert daemon.proc.poll() is None, daemon.log()[-2000:]
        finally:
            stop.set()
            thread.join()
        total = written[0]
        wait_for(lambda: sample(daemon.proc.pid, wal, store, started, total)["stored"] == total, timeout=60)
        out = tmp_path / "out" / "suppressions.csv"
        wait_for(lambda: sum(1 for _ in csv.reader(out.open())) - 1 == total, timeout=60)
        assert daemon.terminate(timeout=30) == 0
    warm = max(1, int(len(samples) * 0.2))
    steady = samples[warm:]
    assert len(steady) >= 6, "too short a soak to compare thirds"
    figures = {key: thirds(steady, key) for key in ("rss_kib", "wal_kib", "fds", "threads")}
    with capsys.disabled():
        print(f"\nsoak: {SECONDS:.0f} s, {total} rows written ({ROWS_PER_SECOND}/s), sample every {SAMPLE_EVERY:.0f} s, "
              f"warm-up {warm} samples")
        print(table(samples))
        print("first third max / last third max (after warm-up): "
              + ", ".join(f"{k} {a} / {b}" for k, (a, b) in figures.items()))
    rss_first, rss_last = figures["rss_kib"]
    assert rss_last <= max(rss_first * 1.2, rss_first + 8 * 1024), figures
    wal_first, wal_last = figures["wal_kib"]
    assert max(s["wal_kib"] for s in samples) * 1024 <= WAL_LIMIT, figures
    assert wal_last <= max(wal_first * 1.5 + 1024, 20 * 1024), figures
    assert figures["threads"][1] <= figures["threads"][0], figures
    assert figures["fds"][1] <= figures["fds"][0] + 4, figures
    assert "ERROR" not in daemon.log()

"""The PostgreSQL benchmarks (issue 20): failover of several daemons, and 1,000,000 on PostgreSQL.

Both start a throwaway cluster the way the tests do (tests/pg_cluster.py: initdb in a temporary
folder, a unix socket only, fsync off, run as the user optout-pg when we are root), and stop it at
the end. Without fsync the store's commits cost less than on a production server; the SQLite
figures beside them keep their fsyncs, so the PostgreSQL-against-SQLite ratios flatter PostgreSQL
a little on write-heavy work (import), not on reads (export, reconcile).
"""

from __future__ import annotations

import csv
import math
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from bench.run import Row, bench_reconcile_on, build_store, cli, make_import_csv, measured, write_settings


@contextmanager
def cluster():
    """A running throwaway cluster (tests/pg_cluster.py), stopped and removed afterwards."""
    from tests import pg_cluster

    started = pg_cluster.start()
    try:
        yield started
    finally:
        started.stop()


def new_database(running, name: str) -> str:
    """Create database `name` in the cluster; its URL."""
    import psycopg

    with psycopg.connect(running.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return running.url(name)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (0 < share <= 1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


# -- failover -------------------------------------------------------------------------------


HOLDERS_SQL = (
    "SELECT l.adapter, l.pid, l.since FROM leases l WHERE EXISTS"
    " (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1"
    " AND k.pid = l.backend_pid AND k.classid::bigint = (l.lock_key >> 32) & 4294967295"
    " AND k.objid::bigint = l.lock_key & 4294967295)")


class Daemons:
    """Real `optout-sync run` processes on one settings file; each incarnation logs to its own file."""

    def __init__(self, work: Path, settings: Path):
        self.work, self.settings = work, settings
        self.procs: dict[int, subprocess.Popen] = {}   # pid -> the live process
        self.logs: list[Path] = []
        self.log_of: dict[int, Path] = {}

    def start(self) -> int:
        log = self.work / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("w") as handle:
            proc = subprocess.Popen([*cli(), "--config", str(self.settings), "run"], cwd=self.work, stdout=handle,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[proc.pid] = proc
        self.log_of[proc.pid] = log
        return proc.pid

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> list[int]:
        """SIGTERM every live daemon once it has started (before, SIGTERM kills it outright); their exit codes."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                " started adapters=" in self.log_of[pid].read_text(errors="replace") for pid in self.procs):
            time.sleep(0.1)
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs.values():
            try:
                codes.append(proc.wait(60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(10))
        self.procs.clear()
        return codes

    def text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)


def failover_settings(work: Path, url: str, sources: int, sinks: int, interval: float) -> Path:
    adapters = ""
    for i in range(sources):
        (work / f"in{i}").mkdir()
        adapters += (f'[[adapters]]\nname = "in{i}"\ntype = "csv_folder"\npath = "in{i}"\nsettle_seconds = 0\n'
                     f'interval = {interval}\n')
    for i in range(sinks):
        adapters += f'[[adapters]]\nname = "out{i}"\ntype = "csv_file"\npath = "out{i}.csv"\ninterval = {interval}\n'
    path = work / "settings.toml"
    path.write_text(f'[store]\nurl = "{url}"\n[logging]\nlevel = "info"\n{adapters}')
    return path


def arrivals(work: Path, sources: int, total: int, seconds: float, tick: float, stop: threading.Event) -> None:
    """Drop `total` opt-outs as CSV files into the source folders, evenly over `seconds` (one file a tick)."""
    ticks = max(1, round(seconds / tick))
    started, sent = time.monotonic(), 0
    for k in range(ticks):
        if stop.is_set():
            return
        upto = round(total * (k + 1) / ticks)
        folder = work / f"in{k % sources}"
        temp = folder / f".{k:06d}.part"
        # Reasons differ by address, so a second apply of an item with another effect would show.
        temp.write_text("email,scope,reason\n" + "".join(
            f"fo{i:07d}@example.com,,{'spam_complaint' if i % 3 == 0 else 'unsubscribed'}\n"
            for i in range(sent, upto)))
        temp.rename(folder / f"{k:06d}.csv")
        sent = upto
        time.sleep(max(0.0, started + (k + 1) * tick - time.monotonic()))


def expected_addresses(total: int) -> set[str]:
    return {f"fo{i:07d}@example.com" for i in range(total)}


def sink_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return [row for row in rows[1:] if row]


def duplicates(rows: list[tuple[tuple[str, str], tuple]]) -> tuple[int, int]:
    """(keys held twice with the same content, keys held twice with different content)."""
    by_key: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for key, content in rows:
        by_key[key].append(content)
    same = sum(1 for contents in by_key.values() if len(contents) > 1 and len(set(contents)) == 1)
    different = sum(1 for contents in by_key.values() if len(set(contents)) > 1)
    return same, different


def bench_failover(work: Path, total: int = 50_000, seconds: float = 180.0, kill_every: float = 20.0,
                   interval: float = 1.0, daemons: int = 3, sources: int = 2, sinks: int = 3) -> list[Row]:
    """3 daemons, 5 adapters on one PostgreSQL store; SIGKILL the busiest daemon every `kill_every` s.

    The daemon killed is the one holding the most leases (killing one that holds none would
    measure no takeover); it is started again once its adapters are taken over, so `daemons`
    run most of the time. A takeover is timed from the kill to the `since` the new holder wrote
    in its lease row (the database's record, microseconds, same host's clock).
    """
    import psycopg

    with cluster() as running:
        url = new_database(running, "failover")
        settings = failover_settings(work, url, sources, sinks, interval)
        names = [f"in{i}" for i in range(sources)] + [f"out{i}" for i in range(sinks)]
        fleet = Daemons(work, settings)
        conn = None
        stop_arrivals = threading.Event()
        feeder = threading.Thread(target=arrivals, args=(work, sources, total, seconds, 0.5, stop_arrivals))
        takeovers: list[float] = []
        kills = 0
        try:
            t_start = time.monotonic()
            for _ in range(daemons):
                fleet.start()
            deadline = time.monotonic() + 120
            while True:
                try:
                    conn = conn or psycopg.connect(url, autocommit=True)
                    held = {a: pid for a, pid, _ in conn.execute(HOLDERS_SQL)}
                except psycopg.Error:  # before the first daemon made the schema
                    held = {}
                    conn = None
                if set(held) == set(names):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemons did not take every lease within 120 s: {held}\n"
                                       f"{fleet.text()[-3000:]}")
                time.sleep(0.1)
            began = time.monotonic()
            print(f"  failover: {daemons} daemons hold every lease after {began - t_start:.1f} s", file=sys.stderr)
            feeder.start()
            # Each kill lands at a random point of the interval: at exact multiples of it, a daemon
            # restarted after the previous kill would meet every kill at the same phase of its lease loop.
            phases = random.Random(20)
            while (kills + 1) * kill_every <= seconds + 0.001:
                moment = began + (kills + 1) * kill_every - phases.uniform(0, interval)
                time.sleep(max(0.0, moment - time.monotonic()))
                held = {a: pid for a, pid, _ in conn.execute(HOLDERS_SQL)}
                counts = Counter(pid for pid in held.values() if pid in fleet.procs)
                if not counts:
                    raise RuntimeError(f"no live daemon holds a lease: {held}")
                victim, _ = counts.most_common(1)[0]
                lost = sorted(a for a, pid in held.items() if pid == victim)
                killed_at = time.time()
                fleet.kill(victim)
                kills += 1
                wait_until = time.monotonic() + 10 * interval + 30
                while True:
                    rows = {a: (pid, since) for a, pid, since in conn.execute(HOLDERS_SQL)}
                    if all(a in rows and rows[a][0] != victim for a in lost):
                        break
                    if time.monotonic() > wait_until:
                        raise RuntimeError(f"adapters {lost} were not taken over within {10 * interval + 30:.0f} s")
                    time.sleep(0.02)
                for a in lost:
                    takeovers.append(datetime.fromisoformat(rows[a][1]).timestamp() - killed_at)
                fleet.start()
            feeder.join()
            # Everything must arrive in the store and at every sink: wait for it (bounded).
            wanted = expected_addresses(total)
            settle_deadline = time.monotonic() + 60 + total / 500
            while time.monotonic() < settle_deadline:
                stored = conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]
                if stored >= total and all(len({r[0] for r in sink_rows(work / f"out{i}.csv")}) >= total
                                           for i in range(sinks)):
                    break
                time.sleep(1)
            print(f"  failover: arrivals ended after {seconds:.0f} s, all arrived (or gave up) "
                  f"{time.monotonic() - began - seconds:.1f} s later", file=sys.stderr)
            store_has = {row[0] for row in conn.execute("SELECT address FROM suppressions")}
            events = [((a, s), (r, o, t)) for a, s, r, o, t in conn.execute(
                "SELECT address, scope, reason, origin, occurred_at FROM events WHERE kind = 'suppressed'")]
            codes = fleet.stop_all()
        finally:
            stop_arrivals.set()
            if feeder.is_alive():
                feeder.join()
            for pid in list(fleet.procs):
                fleet.kill(pid)
            if conn is not None:
                conn.close()
    logs = fleet.text()
    lost_store = len(wanted - store_has)
    lost_sinks = 0
    same = different = 0
    for i in range(sinks):
        rows = sink_rows(work / f"out{i}.csv")
        lost_sinks += len(wanted - {r[0] for r in rows})
        s, d = duplicates([((r[0], r[1]), tuple(r[2:])) for r in rows])
        same, different = same + s, different + d
    s, d = duplicates(events)
    same, different = same + s, different + d
    # Pushes counted by the daemons beyond one per item and sink: re-sent after a kill between the
    # sink's write and the store's record of it; the sink answered "already" (the same effect).
    pushed = sum(int(n) for n in re.findall(r" (?:cycle|push) adapter=out\d+ .*?pushed=(\d+)", logs))
    resent = max(0, pushed - total * sinks)
    errors = logs.count(" worker_error ")
    if any(code != 0 for code in codes):
        raise RuntimeError(f"a daemon exited with {codes} at the end\n{logs[-3000:]}")
    print(f"  failover: {kills} kills, {len(takeovers)} takeovers, {len(fleet.logs)} daemon incarnations,"
          f" {resent} re-sent (sink already held), {errors} worker errors", file=sys.stderr)
    bar = 2 * interval
    shape = (f"{total:,} opt-outs over {seconds:.0f} s, {daemons} daemons, {sources + sinks} adapters, "
             f"interval {interval:g} s")
    rows = [Row("failover", f"opt-outs lost (store and {sinks} sinks), {shape}", lost_store + lost_sinks, None, "",
                "0", lost_store + lost_sinks == 0),
            Row("failover", "items applied twice, different effect", different, None, "", "0", different == 0),
            Row("failover", "items held twice, same effect (sink files and event log)", same, None, "", "-", True),
            Row("failover", "pushes re-sent after a kill (the sink answered 'already')", resent, None, "", "-", True)]
    if takeovers:
        for label, value in (("p50", statistics.median(takeovers)), ("p99", percentile(takeovers, 0.99)),
                             ("max", max(takeovers))):
            figure = (f"takeover {label}, {len(takeovers)} takeovers in {kills} SIGKILLs every {kill_every:g} s"
                      if label == "p50" else f"takeover {label}")
            # The baseline is the interval: the lease loop's period, the least a takeover can wait.
            rows.append(Row("failover", figure, value, interval, "s", f"<= {bar:g} s (2 intervals)",
                            label != "p99" or value <= bar))
    else:
        rows.append(Row("failover", "takeovers measured", 0, None, "", ">= 1", False))
    return rows


# -- 1,000,000 on PostgreSQL ---------------------------------------------------------------------


def psql(running, url: str, script: str, work: Path) -> float:
    """Run a psql script (stdin) against `url`; its wall seconds."""
    path = work / "script.psql"
    path.write_text(script)
    with path.open() as stdin:
        return measured([str(running.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", url], work,
                        stdin=stdin)[0]


def pg_settings(work: Path, url: str, adapters: str = "") -> Path:
    path = work / "settings.toml"
    path.write_text(f'[store]\nurl = "{url}"\n[logging]\nlevel = "warning"\n{adapters}\n')
    return path


def bench_pg_scale(work: Path, n: int) -> list[Row]:
    """Import, export and reconcile of n on PostgreSQL, beside SQLite and `psql \\copy`, one round each."""
    rows: list[Row] = []
    with cluster() as running:
        # Import: the same CSV (10 % duplicates, 1 % invalid) into each store; \copy into one table.
        data = work / "import.csv"
        make_import_csv(data, n)
        times = {}
        for backend in ("sqlite", "postgresql"):
            folder = work / f"import-{backend}"
            folder.mkdir()
            settings = (write_settings(folder) if backend == "sqlite"
                        else pg_settings(folder, new_database(running, "import_store")))
            _, _, preview = measured([*cli(), "--config", str(settings), "import", str(data)], folder)
            count = int(preview.rsplit("--confirm", 1)[1].split()[0])
            times[backend] = measured([*cli(), "--config", str(settings), "import", str(data), "--confirm",
                                       str(count)], folder)[0]
        copy_in = psql(running, new_database(running, "import_copy"),
                       "CREATE TABLE t(name text, email text, signed_up text);\n"
                       f"\\copy t FROM '{data}' WITH (FORMAT csv, HEADER true)\n", work)
        rows += [Row("pg import", f"{n:,} rows on PostgreSQL (baseline: psql \\copy into one table)",
                     times["postgresql"], copy_in, "s", "<= 3x baseline", times["postgresql"] <= 3 * copy_in),
                 Row("pg import", "PostgreSQL (baseline: SQLite, same run)", times["postgresql"], times["sqlite"],
                     "s", "-", True)]
        data.unlink()

        # Export of a store of n (built by import); \copy of the same table out as the baseline.
        times = {}
        url = new_database(running, "export_store")
        for backend in ("sqlite", "postgresql"):
            folder = work / f"export-{backend}"
            folder.mkdir()
            settings = write_settings(folder) if backend == "sqlite" else pg_settings(folder, url)
            build_store(folder, settings, n)
            times[backend] = measured([*cli(), "--config", str(settings), "export", "-o", str(folder / "out.csv")],
                                      folder)[0]
        copy_out = psql(running, url,
                        "\\copy (SELECT address AS email, scope, reason, origin, source, occurred_at FROM suppressions"
                        f" ORDER BY address, scope) TO '{work / 'copy-out.csv'}' WITH (FORMAT csv, HEADER true)\n",
                        work)
        rows += [Row("pg export", f"{n:,} suppressions on PostgreSQL (baseline: psql \\copy out)",
                     times["postgresql"], copy_out, "s", "<= 3x baseline", times["postgresql"] <= 3 * copy_out),
                 Row("pg export", "PostgreSQL (baseline: SQLite, same run)", times["postgresql"], times["sqlite"],
                     "s", "-", True)]

        # Reconcile, 1 % differing each way (as the SQLite reconcile bench); the baseline loads the
        # source and sink lists with \copy and diffs them against the store's table in SQL.
        times = {}
        for backend in ("sqlite", "postgresql"):
            folder = work / f"reconcile-{backend}"
            folder.mkdir()
            url = new_database(running, "reconcile_store") if backend == "postgresql" else None
            store = f'url = "{url}"' if url else 'path = "store.db"'
            times[backend] = bench_reconcile_on(folder, n, store)[0]
        folder = work / "reconcile-postgresql"
        copy_diff = psql(running, url,
                         "CREATE TABLE src(email text); CREATE TABLE snk(email text);\n"
                         f"\\copy src FROM '{folder / 'source.txt'}' WITH (FORMAT csv, HEADER true)\n"
                         f"\\copy snk FROM '{folder / 'sink.txt'}' WITH (FORMAT csv)\n"
                         "SELECT count(*) FROM (SELECT email FROM src EXCEPT SELECT address FROM suppressions) d;\n"
                         "SELECT count(*) FROM (SELECT address FROM suppressions EXCEPT SELECT email FROM snk) d;\n",
                         work)
        rows += [Row("pg reconcile", f"{n:,} vs {n:,}, 1 % differing each way, on PostgreSQL (baseline: psql "
                     "\\copy of both lists and EXCEPT both ways)", times["postgresql"], copy_diff, "s",
                     "<= 3x baseline", times["postgresql"] <= 3 * copy_diff),
                 Row("pg reconcile", "PostgreSQL (baseline: SQLite, same run)", times["postgresql"],
                     times["sqlite"], "s", "-", True)]
    return rows


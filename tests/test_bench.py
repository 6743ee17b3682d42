"""Keeps the benchmark scripts working: the quick version runs once and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_run_and_print_every_figure():
    result = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    for benchmark in ("import", "reconcile", "export", "push to file", "push", "vendor reconcile", "mailchimp push",
                      "ses push", "propagation", "idle", "webhooks"):
        assert any(line.startswith(f"| {benchmark} |") for line in lines), benchmark
    push = next(line for line in lines if line.startswith("| push | requests"))
    assert "| yes |" in push   # exactly ceil(N/B) requests


def _table(stdout: str) -> dict[tuple[str, str], list[str]]:
    """The printed table's rows: {(benchmark, figure's first words): cells}."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith("| benchmark |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1].split(",")[0])] = cells
    return rows


@pytest.mark.postgresql
def test_failover_smoke_loses_nothing_and_takes_over_within_two_intervals():
    """3 daemons on a throwaway PostgreSQL, one SIGKILL, 600 opt-outs arriving meanwhile (about 25 s)."""
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "failover", "--size", "600",
                             "--seconds", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _table(result.stdout)
    lost = rows[("failover", "opt-outs lost (store and 3 sinks)")]
    assert lost[2] == "0" and lost[-1] == "yes", lost
    twice = rows[("failover", "items applied twice")]
    assert twice[2] == "0" and twice[-1] == "yes", twice
    p50 = rows[("failover", "takeover p50")]
    assert "1 SIGKILLs" in p50[1] and "takeovers" in p50[1], p50
    p99 = rows[("failover", "takeover p99")]
    assert p99[-1] == "yes", p99   # within 2 intervals of 1 s
    assert float(p99[2].split()[0]) > 0


@pytest.mark.postgresql
def test_pg_scale_smoke_prints_each_figure_beside_sqlite_and_psql_copy():
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "pg-scale", "--size", "2000"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _table(result.stdout)
    for benchmark, first in (("pg import", "2"), ("pg export", "2"), ("pg reconcile", "2")):
        on_pg = next(cells for (name, figure), cells in rows.items() if name == benchmark and "psql" in cells[1])
        beside = rows[(benchmark, "PostgreSQL (baseline: SQLite")]
        assert on_pg[1].startswith(f"{first},000"), on_pg
        for cells in (on_pg, beside):
            ours, base, ratio = float(cells[2].split()[0]), float(cells[3].split()[0]), float(cells[4].rstrip("x"))
            # Each is a real process run: startup alone takes more than a millisecond.
            assert ours >= 0.001 and base >= 0.001 and abs(ratio - ours / base) <= 0.02 * ratio + 0.01, cells


def test_failover_counts_a_key_held_twice_by_whether_its_effect_differs(tmp_path):
    """The failover's check of a sink file: the same row twice is a harmless re-send; other content is not."""
    from bench.pg import duplicates, sink_rows

    sink = tmp_path / "out0.csv"
    sink.write_text("email,scope,reason,origin,occurred_at\n"
                    "a@example.com,*,unsubscribed,user,\n"
                    "b@example.com,*,unsubscribed,user,\n"
                    "a@example.com,*,unsubscribed,user,\n"       # re-sent: the same effect
                    "c@example.com,*,unsubscribed,user,\n"
                    "c@example.com,*,spam_complaint,user,\n"     # applied again with another reason
                    "c@example.com,t1,unsubscribed,user,\n")     # another scope: another key
    rows = sink_rows(sink)
    assert len(rows) == 6
    assert duplicates([((r[0], r[1]), tuple(r[2:])) for r in rows]) == (1, 1)
    assert sink_rows(tmp_path / "missing.csv") == []


def test_an_unknown_benchmark_name_is_a_usage_error_naming_the_known_ones():
    result = subprocess.run([sys.executable, "-m", "bench", "--only", "push-to-file", "--only", "export"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "--only push-to-file: no such benchmark" in result.stderr and "push-file" in result.stderr

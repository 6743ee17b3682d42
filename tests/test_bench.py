"""Keeps the benchmark scripts working: the quick version runs once and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

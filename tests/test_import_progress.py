"""`import` progress: a bar over the file's bytes on a terminal only, a phase line while it saves, JSON on request.

The CLI tests run the real `optout-sync import` process with stderr on a pseudo-terminal (pty),
redirected to a file, or with --json.
"""

from __future__ import annotations

import json
import os
import pty
import sqlite3
import subprocess

import pytest

from connector.csv_import import ImportFile
from connector.terminal_progress import size_text

from .conftest import write_settings
from .process import command

ROWS = 65_000  # several progress reports (one per 10,000 rows), the last one short of the end


def _settings(tmp_path):
    return write_settings(tmp_path, [{"name": "out", "type": "csv_file", "role": "write", "path": "out.csv"}])


def _list(tmp_path, rows=ROWS, bad=()):
    path = tmp_path / "list.csv"
    path.write_text("email\n" + "".join(f"user{i}@example.com\n" for i in range(rows)) + "".join(
        f"{value}\n" for value in bad), encoding="utf-8")
    return path


def _run_on_pty(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal and stdout on a pipe: (code, stdout, terminal text)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*command(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(60), out, seen.decode(errors="replace")


def _suppressions(tmp_path) -> int:
    with sqlite3.connect(tmp_path / "store.db") as conn:
        return conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]


def test_on_a_terminal_the_bar_has_the_files_size_as_total_and_reaches_100_percent(tmp_path):
    settings, path = _settings(tmp_path), _list(tmp_path)
    total = size_text(path.stat().st_size)

    code, out, terminal = _run_on_pty("--config", str(settings), "import", str(path))

    assert code == 0, terminal
    frames = [frame for frame in terminal.split("\r") if "reading list.csv" in frame]
    assert len(frames) >= 3, terminal          # drawn as it goes, not only at the end
    assert all(f"of {total}" in frame for frame in frames if "%" in frame and "B of" in frame)
    percents = [int(frame.split("%")[0].split()[-1]) for frame in frames if "%" in frame]
    assert percents == sorted(percents) and percents[0] < 100 and percents[-1] == 100
    assert f"{total} of {total}" in frames[-1] and "/s" in frames[-1]   # the rate
    # After the bar: the phase that used to print nothing, then the preview on stdout as before.
    assert "counting the new opt-outs against the store" in terminal
    assert "counting the new opt-outs against the store: done after" in terminal
    assert f"{ROWS:,}" in out
    assert "Nothing was changed. To apply, run the same command with --confirm 65000" in out


def test_a_confirmed_import_on_a_terminal_shows_the_saving_phase(tmp_path):
    settings, path = _settings(tmp_path), _list(tmp_path)

    code, out, terminal = _run_on_pty("--config", str(settings), "import", str(path), "--confirm", str(ROWS))

    assert code == 0, terminal
    assert "100%" in terminal
    assert "saving the import (one transaction): done after" in terminal
    assert f"Imported {ROWS:,} new opt-outs" in out
    assert _suppressions(tmp_path) == ROWS


def test_with_stderr_redirected_to_a_file_nothing_of_the_bar_appears(tmp_path):
    settings, path = _settings(tmp_path), _list(tmp_path)
    errors = tmp_path / "stderr.txt"

    with errors.open("w") as handle:
        proc = subprocess.run([*command(), "--config", str(settings), "import", str(path), "--confirm", str(ROWS)],
                              stdout=subprocess.PIPE, stderr=handle, stdin=subprocess.DEVNULL, text=True, timeout=60)

    assert proc.returncode == 0
    assert f"Imported {ROWS:,} new opt-outs" in proc.stdout
    text = errors.read_text()
    for trace in ("reading", "%", "\r", "saving the import", "\033["):
        assert trace not in text, text


def test_json_prints_only_json_and_no_bar_even_on_a_terminal(tmp_path):
    settings = _settings(tmp_path)
    path = _list(tmp_path, rows=20_000, bad=["not-an-address", "jane.doe@@example.com"])

    code, out, terminal = _run_on_pty("--config", str(settings), "import", str(path), "--json")

    assert code == 0, terminal
    data = json.loads(out)  # the whole of stdout is one JSON document
    assert data["rows_read"] == 20_002 and data["new"] == 20_000 and data["rejected"] == 2
    assert data["applied"] is False and data["confirm_with"] == 20_000
    assert data["read_as"].startswith("UTF-8")
    assert [item["row"] for item in data["rejected_sample"]] == [20_002, 20_003]
    assert "jane.doe" not in out  # a rejected value is masked like every address
    assert "reading" not in terminal and "%" not in terminal and "counting" not in terminal

    code, out, terminal = _run_on_pty("--config", str(settings), "import", str(path), "--json",
                                      "--confirm", "20000")
    assert code == 0, terminal
    data = json.loads(out)
    assert data["applied"] is True and data["new"] == 20_000 and data["confirm_with"] is None
    assert _suppressions(tmp_path) == 20_000


def _read_progress(source: ImportFile, every: int = 1000) -> list[int]:
    seen = [source.bytes_read]
    for count, _ in enumerate(source.rows(), start=1):
        if count % every == 0:
            seen.append(source.bytes_read)
    seen.append(source.bytes_read)
    return seen


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "cp1252"])
def test_bytes_read_counts_the_binary_file_whatever_its_encoding(tmp_path, encoding):
    path = tmp_path / "list.csv"
    path.write_text("e-mail;name\n" + "".join(f"user{i}@example.com;Zoë {i}\n" for i in range(40_000)),
                    encoding=encoding)
    source = ImportFile(path)
    size = path.stat().st_size
    assert source.size == size

    seen = _read_progress(source)

    assert seen[0] == 0 and seen[-1] == size
    assert seen == sorted(seen)
    assert len({value for value in seen if 0 < value < size}) >= 5  # it moves while the rows come


def test_bytes_read_of_a_workbook_ends_at_its_size_and_never_exceeds_it(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append(["email"])
    for i in range(20_000):
        sheet.append([f"user{i}@example.com"])
    path = tmp_path / "list.xlsx"
    book.save(path)
    source = ImportFile(path)

    seen = _read_progress(source)

    assert seen == sorted(seen) and seen[-1] == path.stat().st_size == source.size
    assert all(value <= source.size for value in seen)
    assert 0 < seen[1] < source.size  # a zip reader reads headers twice; they count once

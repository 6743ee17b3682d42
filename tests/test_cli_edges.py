"""The CLI at its edges, through the real `optout-sync` process: output paths, closed pipes, counts,
Ctrl-C during an import, clean-up of a non-contact adapter, export filters that cannot match."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector import operator
from connector.cli import main
from state.models import OptOut, Page
from state.store import Store

from .conftest import write_settings
from .process import command, run_cli, wait_for

ADAPTERS = [{"name": "inbox", "type": "csv_folder", "path": "inbox"},
            {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv"}]


@pytest.fixture
def world(tmp_path):
    """A settings file and a store holding 3 opt-outs from 'inbox' and 2 from 'oldcrm', an adapter since removed."""
    settings = write_settings(tmp_path, ADAPTERS, topics={"news": "News"})
    with Store(tmp_path / "store.db") as store:
        for source, addresses in (("inbox", ["a@example.com", "b@example.com", "c@example.com"]),
                                  ("oldcrm", ["d@example.com", "e@example.com"])):
            store.ingest_page(source, Page([OptOut(a, "*", "unsubscribed", "recipient",
                                                   "2026-01-15T10:00:00+00:00") for a in addresses]))
            store.promote(source)
    return tmp_path, settings


def suppressions(tmp_path: Path) -> int:
    with Store(tmp_path / "store.db") as store:
        return store.count_suppressions()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single line of stderr; fails if there is more, or a traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- output paths ------------------------------------------------------------------------


def test_output_into_a_missing_folder_is_one_line_exit_2_and_creates_nothing(world):
    tmp_path, settings = world
    (tmp_path / "list.csv").write_text("email\nnew@example.com\n")
    missing = tmp_path / "no-such-folder" / "out.csv"
    result = run_cli("--config", str(settings), "export", "-o", str(missing))
    assert result.returncode == 2
    assert one_error_line(result) == f"error: -o {missing}: the folder {missing.parent} does not exist"
    result = run_cli("--config", str(settings), "import", str(tmp_path / "list.csv"), "--confirm", "1",
                     "--rejected-out", str(missing))
    assert result.returncode == 2
    assert one_error_line(result) == f"error: --rejected-out {missing}: the folder {missing.parent} does not exist"
    assert not missing.parent.exists()
    assert suppressions(tmp_path) == 5  # the import was not applied


def test_output_onto_an_unwritable_file_is_one_line_exit_2_and_leaves_the_file_alone(world):
    tmp_path, settings = world
    if os.geteuid() == 0:
        # root may write any file of a normal file system; a file of /proc it cannot.
        target = Path("/proc/version")
        expected = "cannot write in the folder /proc"
    else:
        target = tmp_path / "locked.csv"
        target.write_text("old\n")
        target.chmod(0o444)
        expected = "cannot write this file (permission denied)"
    before = target.read_text()
    result = run_cli("--config", str(settings), "export", "-o", str(target))
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith(f"error: -o {target}: ") and expected in line, line
    assert target.read_text() == before


def test_a_failed_export_leaves_no_half_written_file_and_keeps_the_old_one(world):
    tmp_path, settings = world
    target = tmp_path / "export.csv"
    target.write_text("the previous export\n")
    result = run_cli("--config", str(settings), "export", "-o", str(target), "--source", "nosuch")
    assert result.returncode == 2, result.stderr
    assert target.read_text() == "the previous export\n"
    assert leftovers(tmp_path) == []
    result = run_cli("--config", str(settings), "export", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert len(target.read_text().splitlines()) == 1 + 5 and leftovers(tmp_path) == []


# -- closed pipes ------------------------------------------------------------------------------


def piped(args: list[str], reader: list[str], env: dict | None = None) -> tuple[int, str, bytes]:
    """Run the CLI into `reader` (a real process) as a shell pipe does; (our exit code, our stderr, what it read)."""
    ours = subprocess.Popen([*command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    theirs = subprocess.Popen(reader, stdin=ours.stdout, stdout=subprocess.PIPE)
    ours.stdout.close()  # only the reader holds the read end now, as in `a | b`
    got, _ = theirs.communicate(timeout=60)
    stderr = ours.stderr.read().decode()
    ours.stderr.close()
    return ours.wait(60), stderr, got


def test_export_into_head_ends_quietly_with_0(world):
    tmp_path, settings = world
    big = tmp_path / "big.csv"
    big.write_text("email\n" + "".join(f"user{i}@example.com\n" for i in range(30_000)))
    assert run_cli("--config", str(settings), "import", str(big), "--confirm", "30000").returncode == 0
    code, stderr, got = piped(["--config", str(settings), "export"], ["head", "-1"])
    assert got == b"email,scope,reason,origin,source,occurred_at,released_at\n"
    assert (code, stderr) == (0, "")  # 1 with "Aborted"-style noise before


@pytest.mark.parametrize("args", [["export"], ["history", "a@example.com"], ["history", "a@example.com", "--json"],
                                  ["failures"], ["failures", "--json"], ["status"], ["status", "--json"],
                                  ["check"]], ids=" ".join)
def test_every_printing_command_ends_quietly_with_0_when_its_reader_has_gone(world, args):
    tmp_path, settings = world
    # The reader exits before reading anything; the CLI takes longer than that to start.
    code, stderr, _ = piped(["--config", str(settings), *args], ["true"])
    assert (code, stderr) == (0, "")


# -- counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, option", [
    (["import", "LIST", "--confirm", "-1"], "--confirm"),
    (["approve", "inbox", "--count", "-1"], "--count"),
    (["cleanup", "sink", "--reason", "hard_bounce", "--delete", "--confirm", "-1"], "--confirm"),
    (["run", "--grace", "-1"], "--grace"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_a_negative_count_is_a_usage_error_naming_the_option(world, args, option):
    tmp_path, settings = world
    (tmp_path / "list.csv").write_text("email\nnew@example.com\n")
    args = [str(tmp_path / "list.csv") if a == "LIST" else a for a in args]
    result = run_cli("--config", str(settings), *args)
    assert result.returncode == 2
    assert f"Invalid value for '{option}': -1" in result.stderr and "Traceback" not in result.stderr
    assert suppressions(tmp_path) == 5


# -- clean-up of an adapter without contacts ---------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--delete", "--confirm", "3"]], ids=["snapshot", "delete"])
def test_cleanup_of_an_adapter_without_contacts_is_a_usage_error(world, extra):
    tmp_path, settings = world
    result = run_cli("--config", str(settings), "cleanup", "sink", "--reason", "hard_bounce", *extra)
    assert result.returncode == 2
    assert one_error_line(result) == ("error: adapter 'sink' (csv_file) has no contacts to look up or delete; "
                                      "clean-up works with adapters that keep contacts, such as hubspot")


# -- export filters ------------------------------------------------------------------------------------


def test_export_of_an_unknown_source_is_an_error_but_a_removed_adapter_with_rows_stays_exportable(world):
    tmp_path, settings = world
    result = run_cli("--config", str(settings), "export", "--source", "nosuch")
    assert result.returncode == 2 and result.stdout == ""
    assert one_error_line(result) == ("error: --source 'nosuch' is not a configured adapter, 'import', or the "
                                      "source of any stored opt-out (configured: inbox, sink)")
    removed = run_cli("--config", str(settings), "export", "--source", "oldcrm")
    assert removed.returncode == 0, removed.stderr
    assert [line.split(",")[0] for line in removed.stdout.splitlines()[1:]] == ["d@example.com", "e@example.com"]
    for source in ("sink", "import"):  # configured (or the import's) but with no rows: an empty export, no error
        empty = run_cli("--config", str(settings), "export", "--source", source)
        assert (empty.returncode, empty.stdout) == (0, "email,scope,reason,origin,source,occurred_at,released_at\n")


@pytest.mark.parametrize("since, until", [("2026-02-01", "2026-01-01"),
                                          ("2026-01-15T12:00:00Z", "2026-01-15T12:00:00Z")])
def test_export_with_since_not_before_until_is_an_error(world, since, until):
    tmp_path, settings = world
    result = run_cli("--config", str(settings), "export", "--since", since, "--until", until)
    assert result.returncode == 2 and result.stdout == ""
    assert one_error_line(result) == (f"error: --since {since} is not before --until {until}: "
                                      "no opt-out can be in that window")
    same_day = run_cli("--config", str(settings), "export", "--since", "2026-01-15", "--until", "2026-01-15")
    assert same_day.returncode == 0 and len(same_day.stdout.splitlines()) == 1 + 5  # a date covers its whole day


# -- Ctrl-C during an import --------------------------------------------------------------------------


def test_ctrl_c_while_the_import_reads_says_nothing_was_changed_and_exits_130(world):
    tmp_path, settings = world
    big = tmp_path / "big.csv"
    big.write_text("email\n" + "".join(f"user{i}@example.com\n" for i in range(400_000)))
    rejected = tmp_path / "rejected.csv"
    proc = subprocess.Popen([*command(), "--config", str(settings), "import", str(big), "--confirm", "400000",
                             "--rejected-out", str(rejected)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A shell without job control starts background commands with SIGINT
                            # ignored, and Python then installs no Ctrl-C handler: give it the default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def reading() -> bool:  # the list is open: past start-up, in the read that takes seconds
        fds = Path(f"/proc/{proc.pid}/fd")
        try:
            return any(os.readlink(fd) == str(big) for fd in fds.iterdir())
        except OSError:
            return False

    wait_for(reading, timeout=30, step=0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted; nothing was changed" and "Aborted" not in err
    assert suppressions(tmp_path) == 5
    assert not rejected.exists() and leftovers(tmp_path) == []


def test_ctrl_c_just_after_the_import_committed_says_it_was_saved_and_exits_130(world, monkeypatch):
    tmp_path, settings = world
    listing = tmp_path / "list.csv"
    listing.write_text("email\nx@example.com\ny@example.com\na@example.com\n")
    real_run_import = operator.run_import_batches

    def committed_then_interrupted(*args, **kwargs):
        real_run_import(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C after the commit, before the command heard back

    monkeypatch.setattr(operator, "run_import_batches", committed_then_interrupted)
    result = CliRunner().invoke(main, ["--config", str(settings), "import", str(listing), "--confirm", "2"])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "interrupted after the import was saved: 2 new opt-outs"
    assert "Aborted" not in result.output
    assert suppressions(tmp_path) == 5 + 2


def test_export_to_stdout_writes_every_row_with_no_deprecated_call(world):
    """To stdout as to a file, in the C locale too; Click 9 removes get_text_stream, which it used."""
    tmp_path, settings = world
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONWARNINGS": "error::DeprecationWarning"}
    result = run_cli("--config", str(settings), "export", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == "email,scope,reason,origin,source,occurred_at,released_at"
    assert [line.split(",")[0] for line in lines[1:]] == [f"{c}@example.com" for c in "abcde"]
    written = tmp_path / "export.csv"
    assert run_cli("--config", str(settings), "export", "-o", str(written), env=env).returncode == 0
    assert written.read_text(encoding="utf-8") == result.stdout

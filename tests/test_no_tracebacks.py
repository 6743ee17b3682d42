"""Every command of the real `optout-sync` process, given bad paths, bad values and closed pipes, answers
with its documented exit code (README "Exit codes") and a message, never a Python traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from state.store import Store

from .conftest import write_settings
from .process import command, run_cli

ADAPTERS = [{"name": "inbox", "type": "csv_folder", "path": "inbox"},
            {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv"}]

# One call of every subcommand, with its required arguments (LIST: a small list to import).
EVERY_COMMAND = [
    ["run"],
    ["sync", "--once"],
    ["status"],
    ["failures"],
    ["approve", "inbox", "--count", "1"],
    ["reconcile", "inbox"],
    ["check"],
    ["import", "LIST"],
    ["export"],
    ["history", "a@example.com"],
    ["events"],
    ["lift", "a@example.com", "--scope", "*", "--legal-basis", "consent", "--explanation", "test"],
    ["cleanup", "sink", "--reason", "hard_bounce"],
    ["backup", "TMP/backup.db"],
    ["restore", "TMP/backup.db"],
    ["config"],
    ["store", "copy", "--to", "TMP/copy.db"],
]
# Commands that read no settings file (`init` writes one): their bad values are in BAD_VALUES.
WITHOUT_SETTINGS = {"init"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Valid settings, an existing store and a list to import; shared, since no case may change them."""
    folder = tmp_path_factory.mktemp("no-tracebacks")
    settings = write_settings(folder, ADAPTERS, topics={"news": "News"})
    Store(folder / "store.db").close()
    (folder / "list.csv").write_text("email\nann@example.com\n")
    return folder, settings


def call(world, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    folder, settings = world
    args = [str(folder / "list.csv") if a == "LIST" else a.replace("TMP", str(folder)) for a in args]
    return run_cli(*args, env=env, cwd=folder, timeout=120)


def assert_answered(result: subprocess.CompletedProcess, code: int, message: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output
    assert message in result.stderr, result.stderr


def names(value) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=names)
def test_every_command_with_a_missing_settings_file_or_a_folder_for_one(world, args):
    folder, _ = world
    missing = folder / "missing.toml"
    assert_answered(call(world, ["--config", str(missing), *args]), 2,
                    f"{missing}: the settings file given with --config does not exist")
    assert_answered(call(world, ["--config", str(folder), *args]), 2, f"{folder}: is a folder, not a settings file")
    assert_answered(call(world, args, env={"OPTOUT_SYNC_CONFIG": str(missing)}), 2,
                    f"{missing}: the settings file named by OPTOUT_SYNC_CONFIG does not exist")
    assert not missing.exists()


CONFIG = ["--config", "TMP/settings.toml"]

BAD_VALUES = [
    # (arguments, exit code, a part of the message)
    ([*CONFIG, "run", "--grace", "soon"], 2, "Invalid value for '--grace'"),
    ([*CONFIG, "sync"], 2, "Missing option '--once'"),
    ([*CONFIG, "sync", "--once", "--adapter", "nosuch"], 2, "no adapter named 'nosuch'"),
    ([*CONFIG, "status", "--bogus"], 2, "--bogus"),
    ([*CONFIG, "failures", "--adapter", "nosuch"], 2, "no adapter named 'nosuch'"),
    ([*CONFIG, "approve", "nosuch", "--count", "1"], 2, "no adapter named 'nosuch'"),
    ([*CONFIG, "approve", "inbox", "--count", "many"], 2, "Invalid value for '--count': 'many' is not a valid integer"),
    ([*CONFIG, "approve", "inbox", "--count", "1"], 3, "refused: adapter 'inbox' is not paused"),
    ([*CONFIG, "reconcile", "nosuch"], 2, "no adapter named 'nosuch'"),
    ([*CONFIG, "check", "extra"], 2, "Got unexpected extra argument (extra)"),
    ([*CONFIG, "import", "TMP/no-such-list.csv"], 2, "no such file"),
    ([*CONFIG, "import", "TMP"], 2, "is a directory"),
    ([*CONFIG, "import", "LIST", "--scope", "bogus"], 2, "scope 'bogus' is not '*' or a topic"),
    ([*CONFIG, "import", "LIST", "--column", "9"], 2, "--column"),
    ([*CONFIG, "import", "LIST", "--confirm", "5"], 3, "refused: the import would add 1 new opt-outs, not 5"),
    ([*CONFIG, "export", "--reason", "bogus"], 2, "Invalid value for '--reason'"),
    ([*CONFIG, "export", "--scope", "bogus"], 2, "scope 'bogus' is not '*' or a topic"),
    ([*CONFIG, "export", "--since", "yesterday"], 2, "'yesterday' is not an ISO date"),
    ([*CONFIG, "export", "--source", "nosuch"], 2, "--source 'nosuch' is not a configured adapter"),
    ([*CONFIG, "export", "--since", "2026-02-01", "--until", "2026-01-01"], 2, "is not before --until"),
    ([*CONFIG, "history", "not-an-address"], 2, "'not-an-address' is not a valid address"),
    ([*CONFIG, "events", "--since", "-1"], 2, "Invalid value for '--since': -1"),
    ([*CONFIG, "events", "--since", "abc"], 2, "Invalid value for '--since': 'abc' is not a valid integer"),
    ([*CONFIG, "lift", "a@example.com", "--scope", "bogus", "--legal-basis", "consent", "--explanation", "x"], 2,
     "scope 'bogus' is not '*' or a topic"),
    ([*CONFIG, "lift", "a@example.com", "--scope", "*", "--legal-basis", "whim", "--explanation", "x"], 2,
     "Invalid value for '--legal-basis'"),
    ([*CONFIG, "cleanup", "sink", "--reason", "bogus"], 2, "Invalid value for '--reason'"),
    ([*CONFIG, "cleanup", "sink", "--reason", "hard_bounce"], 2, "has no contacts to look up or delete"),
    ([*CONFIG, "--log-format", "xml", "status"], 2, "Invalid value for '--log-format'"),
    ([*CONFIG, "nosuchcommand"], 2, "No such command 'nosuchcommand'"),
    # Counts are never negative.
    ([*CONFIG, "import", "LIST", "--confirm", "-1"], 2, "Invalid value for '--confirm': -1"),
    ([*CONFIG, "approve", "inbox", "--count", "-1"], 2, "Invalid value for '--count': -1"),
    ([*CONFIG, "cleanup", "sink", "--reason", "hard_bounce", "--delete", "--confirm", "-1"], 2,
     "Invalid value for '--confirm': -1"),
    # Output paths into a folder that does not exist.
    ([*CONFIG, "export", "-o", "TMP/nowhere/out.csv"], 2, "the folder TMP/nowhere does not exist"),
    ([*CONFIG, "import", "LIST", "--rejected-out", "TMP/nowhere/rejected.csv"], 2,
     "the folder TMP/nowhere does not exist"),
    ([*CONFIG, "export", "-o", "TMP"], 2, "is a directory"),
    # Backups and restores of what is not there or not a store.
    ([*CONFIG, "backup", "TMP/nowhere/backup.db"], 2, "the folder TMP/nowhere does not exist"),
    ([*CONFIG, "backup", "TMP/list.csv"], 3, "already exists and was not overwritten; use --force"),
    ([*CONFIG, "restore", "TMP/nowhere/backup.db"], 2, "no such file"),
    ([*CONFIG, "restore", "LIST"], 2, "is not an optout-sync store"),
    ([*CONFIG, "config", "--bogus"], 2, "No such option '--bogus'"),
    # store copy: where to, one backend to the other, a URL shown never.
    ([*CONFIG, "store", "copy"], 2, "give the destination with --to URL|FILE or --to-file FILE"),
    ([*CONFIG, "store", "copy", "--to", "TMP/copy.db"], 2, "both the source and the destination (TMP/copy.db) are SQLite"),
    ([*CONFIG, "store", "copy", "--to", "postgresql://u:pw@/db?nosuch=1"], 2, "PostgreSQL URL cannot be read"),
    ([*CONFIG, "store", "copy", "--to-file", "TMP/nowhere/url"], 2, "--to-file TMP/nowhere/url: no such file"),
    ([*CONFIG, "store", "copy", "--to-file", "TMP"], 2, "is a folder, not a file holding a URL"),
    ([*CONFIG, "store", "copy", "--from", "TMP/nowhere/store.db", "--to", "postgresql://u@/db"], 2,
     "no store at TMP/nowhere/store.db: no such file"),
    ([*CONFIG, "store", "copy", "--from", "postgresql://u:pw@/db?nosuch=1", "--to", "TMP/copy.db"], 2,
     "PostgreSQL URL cannot be read"),
    # init never overwrites, and writes nothing when refused.
    ([*CONFIG, "init", "TMP/settings.toml"], 3, "TMP/settings.toml exists; init never overwrites a file"),
    ([*CONFIG, "init", "--adapter", "salesforce", "TMP/new.toml"], 2, "unknown type 'salesforce'"),
    ([*CONFIG, "init", "TMP/nowhere/settings.toml"], 2, "TMP/nowhere: no such folder for the settings file"),
]


@pytest.mark.parametrize("args, code, message", BAD_VALUES, ids=[names(case[0][2:]) for case in BAD_VALUES])
def test_bad_values_get_their_exit_code_and_a_message(world, args, code, message):
    folder, _ = world
    result = call(world, args)
    assert_answered(result, code, message.replace("TMP", str(folder)))
    assert not (folder / "nowhere").exists()


@pytest.mark.parametrize("variable, value, message", [
    ("OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL", "abc", "environment variable OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL"),
    ("OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL", "0", "must be at least 1 second"),
    ("OPTOUT_SYNC_LOGGING_LEVEL", "debug", "did you mean OPTOUT_SYNC_LOGGING__LEVEL?"),
    ("OPTOUT_SYNC_ADAPTERS__NOSUCH__INTERVAL", "5s", "names adapter 'nosuch', which is not configured"),
])
@pytest.mark.parametrize("args", [["check"], ["run"]], ids=names)
def test_bad_environment_overrides_are_settings_errors(world, variable, value, message, args):
    assert_answered(call(world, [*CONFIG, *args], env={variable: value}), 2, message)


READERS = [["status"], ["status", "--json"], ["failures"], ["history", "a@example.com"], ["export"], ["check"],
           ["import", "LIST"], ["events", "--json"]]


@pytest.mark.parametrize("args", READERS, ids=names)
def test_a_reader_that_closes_early_ends_the_command_quietly_with_0(world, args):
    folder, settings = world
    args = [str(folder / "list.csv") if a == "LIST" else a for a in args]
    ours = subprocess.Popen([*command(), "--config", str(settings), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    reader = subprocess.Popen(["true"], stdin=ours.stdout)  # reads nothing and exits
    ours.stdout.close()
    reader.wait(60)
    _, stderr = ours.communicate(timeout=120)
    assert "Traceback" not in stderr.decode() and stderr.decode() == ""
    assert ours.returncode == 0


@pytest.mark.parametrize("args, code, message", [
    (["status"], 0, ""),
    (["history", "a@example.com"], 0, ""),
    (["export"], 2, "stdout is closed; give -o FILE to export to a file"),
    (["events", "--follow"], 2, "stdout is closed; events writes to stdout"),
], ids=lambda value: names(value) if isinstance(value, list) else None)
def test_a_closed_stdout_is_no_traceback(world, args, code, message):
    folder, settings = world
    # As `optout-sync status >&-`: the process starts with no file descriptor 1 at all.
    result = subprocess.run([*command(), "--config", str(settings), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=120,
                            preexec_fn=lambda: os.close(1))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code and message in result.stderr


def test_the_cases_above_cover_every_command():
    from connector.cli import main

    covered = {args[0] for args in EVERY_COMMAND}
    assert covered | WITHOUT_SETTINGS == set(main.commands), \
        f"commands without a case: {sorted(set(main.commands) - covered - WITHOUT_SETTINGS)}"
    with_bad_values = {next(a for a in args[2:] if not a.startswith("-") and a not in ("xml",))
                       for args, _, _ in BAD_VALUES}
    assert set(main.commands) <= with_bad_values, sorted(set(main.commands) - with_bad_values)

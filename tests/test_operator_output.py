"""What the operator's commands show: masked rejected values, the rejected-rows file, failures and dismissal,
and the dry run's listing."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from connector import operator
from connector.cli import main
from connector.logs import mask_value
from connector.settings import load_settings
from state.models import OptOut, Page
from state.store import Store

from .conftest import write_settings

# Invalid shapes of an address, each with the text that must not show when masked.
INVALID = [
    ("a b@example.com", "a b"),
    ("zed", "zed"),
    ("john.doe@localhost", "john.doe"),
    ("ann@@example.com", "ann@"),
    ("Jane Doe <jane@example.com>", "Jane Doe"),
    ("x", None),
    ("bo@x", "bo@"),
    ("pat.smith@example..com", "pat.smith"),
]


@pytest.fixture
def world(tmp_path):
    path = write_settings(tmp_path, [
        {"name": "crm", "type": "memory"},
    ])
    return tmp_path, path, load_settings(path, environ={})


def cli(path, *args):
    return CliRunner().invoke(main, ["--config", str(path), *args], catch_exceptions=False)


def write_list(folder, values, name="list.csv"):
    path = folder / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "email"])
        writer.writerows([["n", value] for value in values])
    return path


@pytest.mark.parametrize("value", [v for v, _ in INVALID])
def test_mask_value_is_never_longer_and_hides_the_local_part(value):
    masked = mask_value(value)
    assert len(masked) <= len(value.strip())
    local = value.rpartition("@")[0] or value
    assert local not in masked or len(local) == 0
    assert mask_value(masked) == masked          # masking twice changes nothing


def test_import_preview_masks_every_invalid_value_by_one_rule(world):
    tmp_path, path, settings = world
    listing = write_list(tmp_path, ["ok@example.com", *(v for v, _ in INVALID)])

    result = cli(path, "import", str(listing))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("    row ")]
    assert len(lines) == len(INVALID)
    for (value, secret), line in zip(INVALID, lines):
        assert f"'{mask_value(value)}'" in line, line
        if secret:
            assert secret not in line, line
        # The masked line is never longer than the same line unmasked.
    shown = cli(path, "--show-addresses", "import", str(listing))
    shown_lines = [line for line in shown.output.splitlines() if line.startswith("    row ")]
    for (value, _), line, masked_line in zip(INVALID, shown_lines, lines):
        assert repr(value) in line
        assert len(masked_line) <= len(line)
    assert "row 2:" not in "\n".join(lines)       # the valid row is not listed


def test_rejected_out_gives_the_row_number_its_own_integer_column(world):
    tmp_path, path, settings = world
    # Rows 2 and 4 valid, 3, 5 and 7 rejected, row 6 blank (not a row of the list, but counted).
    listing = tmp_path / "list.csv"
    listing.write_text("email\nok@x.io\nbad one\nok2@x.io\nnope\n\nfoo@bar\n", encoding="utf-8")
    out = tmp_path / "rejected.csv"
    operator.import_file(settings, listing, rejected_out=out)
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["row", "value", "reason"]
    assert [int(r["row"]) for r in rows] == [3, 5, 7]
    assert [r["value"] for r in rows] == ["bad one", "nope", "foo@bar"]
    source_lines = listing.read_text(encoding="utf-8").splitlines()
    for r in rows:    # the number is the file's own line number (header = row 1)
        assert source_lines[int(r["row"]) - 1] == r["value"]


# -- failures: the rejected value, and the audited dismissal ---------------------------------------------------


@pytest.fixture
def folder_world(tmp_path):
    """A csv_folder source and a memory sink, with a list of two valid and three rejected rows read in."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": str(inbox), "interval": 1, "settle_seconds": 0},
        {"name": "crm", "type": "memory"},
    ])
    (inbox / "list.csv").write_text(
        "email,reason\nann@example.com,unsubscribed\na b@example.com,unsubscribed\nzed,\n"
        "bob@example.com,unsubscribed\ncarol@example.com,nonsense\n", encoding="utf-8")
    assert cli(path, "sync", "--once").exit_code == 0
    return tmp_path, path, load_settings(path, environ={})


def open_failures(settings):
    with Store(settings.store.path) as store:
        return list(store.failures())


def test_rejected_rows_keep_their_value_and_failures_shows_it_masked(folder_world):
    tmp_path, path, settings = folder_world
    rows = open_failures(settings)
    assert [(r["location"], r["value"]) for r in rows] == [
        ("list.csv row 3", "a b@example.com"), ("list.csv row 4", "zed"), ("list.csv row 6", "carol@example.com")]

    listed = cli(path, "failures")
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert len(lines) == 3
    for row, line in zip(rows, lines):
        assert line.startswith(f"#{row['id']}  ")
        assert row["location"] in line
    assert "'***@example.com'" in lines[0] and "a b" not in lines[0]
    assert "'***'" in lines[1] and "zed" not in lines[1]
    # An unknown reason's message does not quote the address, so the line adds the value, masked.
    assert "'c***@example.com'" in lines[2] and "carol" not in lines[2] and "unknown reason 'nonsense'" in lines[2]

    shown = cli(path, "--show-addresses", "failures")
    assert "'a b@example.com'" in shown.output and "'zed'" in shown.output and "carol@example.com" in shown.output

    as_json = cli(path, "failures", "--json")
    import json
    data = json.loads(as_json.output)
    assert [d["value"] for d in data] == ["***@example.com", "***", "c***@example.com"]
    assert "a b" not in as_json.output and "zed" not in as_json.output and "carol" not in as_json.output


def test_dismiss_closes_failures_with_an_audit_event_and_status_counts_only_open_ones(folder_world):
    tmp_path, path, settings = folder_world
    first, second, third = (r["id"] for r in open_failures(settings))
    status = cli(path, "status", "--json")
    import json
    assert {a["adapter"]: a["failures"] for a in json.loads(status.output)["adapters"]}["inbox"] == 3

    done = cli(path, "failures", "dismiss", str(first), str(third), "--reason", "fixed in the CRM export")
    assert done.exit_code == 0, done.output
    assert f"dismissed #{first}" in done.output and f"dismissed #{third}" in done.output
    assert "a b@" not in done.output                         # masked here too

    assert [r["id"] for r in open_failures(settings)] == [second]
    with Store(settings.store.path) as store:
        closed = {r["id"]: r for r in store.failures(include_resolved=True)}
        events = store.conn.execute(
            "SELECT kind, address, scope, target, message, details FROM events WHERE kind = 'failure_dismissed'"
            " ORDER BY seq").fetchall()
    assert closed[first]["resolved_at"] and closed[first]["dismissed_reason"] == "fixed in the CRM export"
    assert closed[second]["resolved_at"] is None and closed[second]["dismissed_reason"] is None
    assert [(k, a, t, m) for k, a, _, t, m, _ in events] == [
        ("failure_dismissed", "", "inbox", "fixed in the CRM export")] * 2
    assert [json.loads(d)["failure_id"] for *_, d in events] == [first, third]

    status = cli(path, "status", "--json")
    assert {a["adapter"]: a["failures"] for a in json.loads(status.output)["adapters"]}["inbox"] == 1
    listed = cli(path, "failures")
    assert listed.output.startswith(f"#{second}  ") and len(listed.output.splitlines()) == 1
    # The list command works as before, filters included.
    assert cli(path, "failures", "--adapter", "crm").output == "no open failures\n"


def test_dismiss_with_an_unknown_or_closed_id_names_it_and_changes_nothing(folder_world):
    tmp_path, path, settings = folder_world
    first, second, third = (r["id"] for r in open_failures(settings))
    with Store(settings.store.path) as store:
        before = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]

    unknown = cli(path, "failures", "dismiss", str(first), "999", "998", "--reason", "x")
    assert unknown.exit_code == 2
    assert "no failure with id 999, 998; nothing was dismissed" in unknown.output
    assert "Traceback" not in unknown.output
    assert len(open_failures(settings)) == 3

    assert cli(path, "failures", "dismiss", str(second), "--reason", "done").exit_code == 0
    again = cli(path, "failures", "dismiss", str(first), str(second), "--reason", "done")
    assert again.exit_code == 2 and f"failure {second} is already closed" in again.output
    assert [r["id"] for r in open_failures(settings)] == [first, third]

    blank = cli(path, "failures", "dismiss", str(first), "--reason", "  ")
    assert blank.exit_code == 2 and "a reason is required" in blank.output
    with Store(settings.store.path) as store:
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == before + 1


def test_an_apply_failure_is_dismissed_into_its_address_history_and_a_parked_one_is_refused(folder_world):
    from state.models import PERMANENT, TRANSIENT, ApplyResult
    from state.store import PushOutcome
    tmp_path, path, settings = folder_world
    with Store(settings.store.path) as store:
        seqs = [row[0] for row in store.conn.execute(
            "SELECT seq FROM events WHERE kind = 'suppressed' ORDER BY seq")]
        refused, parked = OptOut("ann@example.com"), OptOut("bob@example.com")
        store.record_push("crm", [PushOutcome(seqs[0], refused, ApplyResult(refused, PERMANENT, "vendor says no")),
                                  PushOutcome(seqs[1], parked, ApplyResult(parked, TRANSIENT, "timeout"))], None)
        ids = {r["address"]: r["id"] for r in store.failures("crm")}

    refusal = cli(path, "failures", "dismiss", str(ids["bob@example.com"]), "--reason", "x")
    assert refusal.exit_code == 3 and "parked apply" in refusal.output
    done = cli(path, "failures", "dismiss", str(ids["ann@example.com"]), "--reason", "address closed at vendor")
    assert done.exit_code == 0
    history = cli(path, "--show-addresses", "history", "ann@example.com")
    assert f"failure #{ids['ann@example.com']} at crm dismissed: address closed at vendor" in history.output
    assert [r["address"] for r in open_failures(settings) if r["adapter"] == "crm"] == ["bob@example.com"]


# -- sync --once --dry-run: counts that add up, and what would be pulled and pushed ---------------------------


@pytest.fixture
def dry_world(tmp_path):
    """An inbox folder and a CSV sink that already hold held@example.com, and a new list dropped in."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": str(inbox), "interval": 1, "settle_seconds": 0},
        {"name": "outbox", "type": "csv_file", "path": str(tmp_path / "out" / "suppressions.csv"), "interval": 1},
    ])
    (inbox / "old.csv").write_text("email,reason\nheld@example.com,unsubscribed\n", encoding="utf-8")
    assert cli(path, "sync", "--once").exit_code == 0
    # 7 rows: 2 new (ann, robert), 1 duplicate (ANN), 1 already held, 3 rejected.
    (inbox / "new.csv").write_text(
        "email,reason\nann@example.com,unsubscribed\nANN@example.com ,unsubscribed\nrobert@example.com,hard_bounce\n"
        "held@example.com,unsubscribed\na b@example.com,unsubscribed\nzed,unsubscribed\n"
        "carol@example.com,nonsense\n", encoding="utf-8")
    return tmp_path, path, load_settings(path, environ={})


def everything(tmp_path, settings) -> dict:
    """The store's rows, the cursors and every file's bytes: what a dry run must leave as it is."""
    with Store(settings.store.path) as store:
        tables = {table: store.conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                  for table in ("suppressions", "events", "checkpoints", "staged", "failures", "runs")}
    files = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(tmp_path.rglob("*"))
             if p.is_file() and not p.name.startswith("store.db")}
    return {"tables": tables, "files": files}


def test_dry_run_counts_add_up_and_list_what_would_be_pulled_and_pushed_masked(dry_world):
    tmp_path, path, settings = dry_world
    before = everything(tmp_path, settings)

    result = cli(path, "sync", "--once", "--dry-run")
    assert result.exit_code == 0, result.output
    assert everything(tmp_path, settings) == before      # store, cursors and files untouched
    lines = result.stdout.splitlines()
    assert lines[0] == ("inbox: would read 7 rows (2 new, 1 duplicate, 1 already held, 0 ignored, 3 rejected), "
                        "would push 0, failed 0, parked 0, skipped 0")
    inbox_part = lines[1:lines.index(next(l for l in lines if l.startswith("outbox:")))]
    assert inbox_part[:3] == ["  new opt-outs (2):",
                              "    ***@example.com (all email, unsubscribed by user)",
                              "    r***@example.com (all email, hard_bounce by user)"]
    assert inbox_part[3] == "  rejected (3):"
    assert inbox_part[4].startswith("    new.csv row 6: invalid address '***@example.com'")
    assert inbox_part[5].startswith("    new.csv row 7: invalid address '***'")
    assert inbox_part[6].startswith("    new.csv row 8 'c***@example.com': unknown reason 'nonsense'")
    outbox = lines[len(inbox_part) + 1:]
    assert outbox[0].startswith("outbox: would read 0 rows (0 new, 0 duplicate, 0 already held, 0 ignored, "
                                "0 rejected), would push 2,")
    assert outbox[1:] == ["  would push (2):",
                          "    ***@example.com (all email, unsubscribed by user)",
                          "    r***@example.com (all email, hard_bounce by user)"]
    for secret in ("ann@", "robert@", "a b@", "zed", "carol@"):
        assert secret not in result.output           # nor in the log lines

    shown = cli(path, "--show-addresses", "sync", "--once", "--dry-run")
    assert "    ann@example.com (all email, unsubscribed by user)" in shown.stdout
    assert "'a b@example.com'" in shown.output and "'zed'" in shown.output

    assert everything(tmp_path, settings) == before      # store, cursors and files untouched


def test_dry_run_json_lists_everything_and_text_the_first_twenty(dry_world):
    import json
    tmp_path, path, settings = dry_world
    rows = "".join(f"user{i:02d}@example.com,unsubscribed\n" for i in range(25))
    (tmp_path / "inbox" / "many.csv").write_text("email,reason\n" + rows, encoding="utf-8")
    before = everything(tmp_path, settings)

    text = cli(path, "sync", "--once", "--dry-run").stdout
    assert "  new opt-outs (27, the first 20; all of them with --json):" in text
    assert "  would push (27, the first 20; all of them with --json):" in text
    assert text.count("(all email, unsubscribed by user)") + text.count("(all email, hard_bounce by user)") == 40

    data = {r["adapter"]: r for r in json.loads(cli(path, "sync", "--once", "--dry-run", "--json").stdout)}
    inbox = data["inbox"]
    assert (inbox["pulled"] + inbox["rejected"], inbox["staged"], inbox["duplicates"], inbox["held"],
            inbox["ignored"], inbox["rejected"]) == (32, 27, 1, 1, 0, 3)
    assert len(inbox["would_add"]) == 27 and len(data["outbox"]["would_push"]) == 27
    assert {a["address"] for a in inbox["would_add"]} == (
        {"***@example.com", "r***@example.com", "u***@example.com"})
    assert [r["value"] for r in inbox["would_reject"]] == ["***@example.com", "***", "c***@example.com"]
    shown = json.loads(cli(path, "--show-addresses", "sync", "--once", "--dry-run", "--json").stdout)
    assert sorted(a["address"] for a in shown[1]["would_push"]) == sorted(
        ["ann@example.com", "robert@example.com"] + [f"user{i:02d}@example.com" for i in range(25)])
    assert everything(tmp_path, settings) == before


# -- csv_folder: who made a list's opt-outs is the operator's explicit choice ----------------------------------


@pytest.mark.parametrize("origin, liftable", [(None, True), ("user", True), ("recipient", False), ("system", False)])
def test_a_dropped_list_without_origin_column_takes_default_origin_and_check_says_which(tmp_path, origin, liftable):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    folder = {"name": "inbox", "type": "csv_folder", "path": str(inbox), "interval": 1, "settle_seconds": 0}
    if origin:
        folder["default_origin"] = origin
    path = write_settings(tmp_path, [folder])
    expected = origin or "user"                       # the documented default
    check = cli(path, "check")
    assert check.exit_code == 0
    assert f"rows without an origin are taken as origin '{expected}'" in check.output
    assert ("liftable with optout-sync lift" in check.output) == liftable

    (inbox / "list.csv").write_text("email,reason\nann@example.com,unsubscribed\n", encoding="utf-8")
    assert cli(path, "sync", "--once").exit_code == 0
    with Store(load_settings(path, environ={}).store.path) as store:
        assert store.suppression("ann@example.com")["origin"] == expected
    lifted = cli(path, "lift", "ann@example.com", "--scope", "*", "--legal-basis", "consent",
                 "--explanation", "asked to be mailed again")
    assert lifted.exit_code == (0 if liftable else 3)


def test_the_example_settings_state_the_folder_origin_and_what_each_choice_means():
    from pathlib import Path
    text = (Path(__file__).parent.parent / "settings.example.toml").read_text(encoding="utf-8")
    block = text[text.index('name = "inbox"'):text.index("[[adapters]]", text.index('name = "inbox"'))]
    assert '\ndefault_origin = "user"\n' in block
    comment = block[block.index("# Who made the opt-outs"):block.index("\ndefault_origin")]
    choices = ['#   "recipient"', '#   "user"', '#   "system"', "# A row's own origin"]
    meanings = ["never liftable", "liftable with", "never liftable"]
    for start, end, meaning in zip(choices, choices[1:], meanings):
        assert meaning in comment[comment.index(start):comment.index(end)], start

"""The embedded default adapters: csv_folder (a followed folder) and csv_file (an append-only sink)."""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from adapters import csv_file, held_keys
from adapters.csv_file import CsvFileAdapter, CsvFileSettings
from adapters.csv_folder import CsvFolderAdapter, CsvFolderSettings
from state.models import ALREADY, APPLIED, OptOut

TOPICS = {"news": "Newsletter"}


def folder(tmp_path: Path, **extra) -> CsvFolderAdapter:
    settings = CsvFolderSettings(name="inbox", path=tmp_path / "in", settle_seconds=0, **extra)
    (tmp_path / "in").mkdir(exist_ok=True)
    return CsvFolderAdapter(settings, TOPICS)


def read(adapter, cursor=None):
    optouts, rejected, last = [], [], cursor
    for page in adapter.read_changes(cursor):
        optouts += page.optouts
        rejected += page.rejected
        last = page.cursor
    return optouts, rejected, last


def test_rows_are_read_once_and_appends_follow(tmp_path):
    adapter = folder(tmp_path)
    path = tmp_path / "in" / "a.csv"
    path.write_text("Email;Scope;Reason;occurred_at\r\nA@x.io;news;unsubscribed;2026-01-02\r\n")
    optouts, rejected, cursor = read(adapter)
    assert [(o.address, o.scope, o.reason, o.occurred_at) for o in optouts] == [
        ("a@x.io", "news", "unsubscribed", "2026-01-02T00:00:00.000000+00:00")]
    assert read(adapter, cursor)[0] == []
    with path.open("a") as handle:
        handle.write("b@x.io;;;\r\n")
    optouts, _, cursor = read(adapter, cursor)
    assert [(o.address, o.scope, o.reason, o.origin) for o in optouts] == [("b@x.io", "*", "imported", "user")]


def test_an_unfinished_last_line_waits_until_it_is_complete(tmp_path):
    adapter = CsvFolderAdapter(CsvFolderSettings(name="i", path=tmp_path, settle_seconds=60), TOPICS)
    path = tmp_path / "a.csv"
    path.write_text("email\nfirst@x.io\nsecond@x.i")
    optouts, _, cursor = read(adapter)
    assert [o.address for o in optouts] == ["first@x.io"]
    with path.open("a") as handle:
        handle.write("o\n")
    assert [o.address for o in read(adapter, cursor)[0]] == ["second@x.io"]


def test_a_rewritten_file_is_read_again(tmp_path):
    adapter = folder(tmp_path)
    path = tmp_path / "in" / "a.csv"
    path.write_text("email\none@x.io\ntwo@x.io\n")
    _, _, cursor = read(adapter)
    path.write_text("email\nthree@x.io\n")            # same inode, shorter: rewritten
    assert [o.address for o in read(adapter, cursor)[0]] == ["three@x.io"]
    replacement = tmp_path / "in" / ".new"
    replacement.write_text("email\nfour@x.io\nfive@x.io\n")
    os.replace(replacement, path)                      # new inode
    assert [o.address for o in read(adapter, cursor)[0]] == ["four@x.io", "five@x.io"]


def test_malformed_rows_are_listed_with_file_and_row_and_the_rest_goes_on(tmp_path):
    adapter = folder(tmp_path)
    (tmp_path / "in" / "bad.csv").write_text(
        'name,email,scope,reason,origin,occurred_at\n'
        'Ann,ann@x.io,,,,\n'
        'Bob,bob@,,,,\n'
        '\n'
        'Cy,cy@x.io,sports,,,\n'
        'Di,di@x.io,,maybe,,\n'
        'Ed,ed@x.io,,,robot,\n'
        'Fi,fi@x.io,,,,yesterday\n'
        'Gus\n'
        '"Hal, Jr.","hal@x.io",news,,,\n')
    optouts, rejected, _ = read(adapter)
    assert [o.address for o in optouts] == ["ann@x.io", "hal@x.io"]
    assert [str(r) for r in rejected] == [
        "bad.csv row 3: invalid address 'bob@': no domain after the @",
        "bad.csv row 5: unknown topic 'sports'; defined topics: ['news']",
        "bad.csv row 6: unknown reason 'maybe'; expected one of unsubscribed, hard_bounce, spam_complaint, manual, imported",
        "bad.csv row 7: unknown origin 'robot'; expected one of recipient, user, system",
        "bad.csv row 8: occurred_at 'yesterday' is not an ISO date or date-time",
        "bad.csv row 9: row has 1 field(s); the email column is number 2",
    ]


def test_a_file_without_an_email_column_is_reported_once_and_read_after_a_fix(tmp_path):
    adapter = folder(tmp_path)
    path = tmp_path / "in" / "a.csv"
    path.write_text("who,when\nann@x.io,today\n")
    optouts, rejected, cursor = read(adapter)
    assert optouts == [] and "no email column" in rejected[0].reason and "set email_column" in rejected[0].reason
    assert read(adapter, cursor)[1] == []               # not reported again
    fixed = folder(tmp_path, email_column="who")
    assert [o.address for o in read(fixed, cursor)[0]] == ["ann@x.io"]


def test_quoted_newlines_and_page_cursors(tmp_path):
    adapter = folder(tmp_path, page_size=2)
    (tmp_path / "in" / "a.csv").write_text('note,email\n"two\nlines",a@x.io\nx,b@x.io\ny,c@x.io\n')
    pages = list(adapter.read_changes(None))
    assert [len(p.optouts) for p in pages] == [2, 1]
    # Resuming from any page's cursor loses nothing (rows of a chunk cut by a page may come
    # again, which the store makes harmless); the last cursor resumes exactly.
    resumed = [o.address for o in read(adapter, pages[0].cursor)[0]]
    assert resumed[-1] == "c@x.io" and set(resumed) <= {"a@x.io", "b@x.io", "c@x.io"}
    assert read(adapter, pages[-1].cursor)[0] == []


def test_csv_file_sink_merges_sorted_and_reports_already_held(tmp_path):
    sink = CsvFileAdapter(CsvFileSettings(name="s", path=tmp_path / "out.csv"), TOPICS)
    results = sink.apply([OptOut("b@x.io"), OptOut("a@x.io", "news", "hard_bounce", "system")])
    assert [r.outcome for r in results] == [APPLIED, APPLIED]
    results = sink.apply([OptOut("c@x.io"), OptOut("b@x.io")])
    assert [r.outcome for r in results] == [APPLIED, ALREADY]
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows == [["email", "scope", "reason", "origin", "occurred_at"],
                    ["a@x.io", "news", "hard_bounce", "system", ""],
                    ["b@x.io", "*", "unsubscribed", "recipient", ""],
                    ["c@x.io", "*", "unsubscribed", "recipient", ""]]
    assert [(o.address, o.scope) for p in sink.read_all() for o in p.optouts] == [
        ("a@x.io", "news"), ("b@x.io", "*"), ("c@x.io", "*")]
    assert [r.outcome for r in sink.remove([OptOut("b@x.io"), OptOut("zz@x.io")])] == [APPLIED, ALREADY]
    assert [o.address for p in sink.read_all() for o in p.optouts] == ["a@x.io", "c@x.io"]


def test_csv_file_sink_appends_whole_rows_while_a_reader_polls(tmp_path):
    """A reader polling the file while batches are appended sees every earlier row, and only whole rows
    on complete lines; at the end every row is there once and no temporary file or marker is left."""
    path = tmp_path / "out.csv"
    sink = CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)
    sink.apply([OptOut(f"seed{i}@x.io") for i in range(2000)])
    stop, seen, bad = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            complete = path.read_text().split("\n")[:-1]   # the text after the last line end may be partial
            seen.append(len(complete))
            bad.extend(line for line in complete[1:] if len(line.split(",")) != 5 or "@x.io" not in line)

    thread = threading.Thread(target=reader)
    thread.start()
    for n in range(20):
        sink.apply([OptOut(f"new{n}-{i}@x.io") for i in range(100)])
    stop.set()
    thread.join()
    assert seen and all(count >= 2001 for count in seen) and seen == sorted(seen) and not bad
    rows = list(csv.reader(path.open()))[1:]
    assert len(rows) == 4000 and len({row[0] for row in rows}) == 4000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_csv_file_append_cut_short_is_cut_back_and_not_read(tmp_path):
    """A kill during an append leaves the marker and part of the batch: neither a full read nor the next
    apply sees that part, and the batch sent again lands whole."""
    path = tmp_path / "out.csv"
    sink = CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)
    sink.apply([OptOut("ann@x.io"), OptOut("bob@x.io")])
    end = path.stat().st_size
    (tmp_path / ".out.csv.append").write_text(f"{end}\n")
    with path.open("a") as handle:
        handle.write("cat@x.io,*,unsubscribed,recipient,\ndan@x.i")   # torn: "dan@x.i" is a real-looking prefix
    restarted = CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)
    assert [o.address for page in restarted.read_all() for o in page.optouts] == ["ann@x.io", "bob@x.io"]
    results = restarted.apply([OptOut("dan@x.io"), OptOut("cat@x.io"), OptOut("bob@x.io")])
    assert [r.outcome for r in results] == [APPLIED, APPLIED, ALREADY]
    assert [row[0] for row in list(csv.reader(path.open()))[1:]] == ["ann@x.io", "bob@x.io", "cat@x.io", "dan@x.io"]
    assert not (tmp_path / ".out.csv.append").exists()


def test_csv_file_keeps_a_hand_edited_last_row_and_sees_other_writers(tmp_path):
    path = tmp_path / "out.csv"
    sink = CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)
    sink.apply([OptOut("ann@x.io")])
    with path.open("a") as handle:
        handle.write("eve@x.io")                    # added by hand, without a line end
    other = CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)   # e.g. a lift in another process
    assert [r.outcome for r in sink.apply([OptOut("eve@x.io"), OptOut("fay@x.io")])] == [ALREADY, APPLIED]
    assert [r.outcome for r in other.apply([OptOut("gus@x.io")])] == [APPLIED]
    assert [r.outcome for r in sink.apply([OptOut("gus@x.io")])] == [ALREADY]   # the other's append is seen
    assert [r.outcome for r in other.remove([OptOut("ann@x.io")])] == [APPLIED]
    assert [r.outcome for r in sink.apply([OptOut("ann@x.io")])] == [APPLIED]   # and its removal
    assert [row[0] for row in list(csv.reader(path.open()))[1:]] == ["eve@x.io", "fay@x.io", "gus@x.io",
                                                                    "ann@x.io"]


def test_csv_file_sink_with_a_scope_represents_only_that_topic(tmp_path):
    sink = CsvFileAdapter(CsvFileSettings(name="s", path=tmp_path / "o.csv", scope="news"), {"news": "N", "x": "X"})
    assert sink.capabilities.scopes == frozenset({"news"})
    time.sleep(0)  # nothing to wait for: the capability is what the engine uses to map scopes


from hypothesis import given, settings as hyp_settings, strategies as st  # noqa: E402

from adapters.csv_records import read_batches  # noqa: E402

cell = st.text(alphabet=st.sampled_from(list('ab@.,;"\n x')), max_size=8)


@hyp_settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(cell, min_size=2, max_size=3), min_size=1, max_size=25),
       chunk=st.integers(1, 64), delimiter=st.sampled_from([",", ";"]))
def test_batches_across_chunk_boundaries_return_every_record_once(rows, chunk, delimiter):
    import io
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    data = buffer.getvalue().encode()
    expected = [r for r in rows if len(r) > 1 or r[0].strip()]

    batches = list(read_batches(io.BytesIO(data), 0, 1, delimiter, True, chunk_bytes=chunk))
    assert [fields for b in batches for _, fields in b.records] == expected
    assert batches[-1].end_offset == len(data)
    # Resuming at any batch's end reads exactly the rest.
    for index, batch in enumerate(batches):
        rest = list(read_batches(io.BytesIO(data), batch.end_offset, batch.next_number, delimiter, True, chunk))
        assert [n for b in rest for n, _ in b.records] == [n for b in batches[index + 1:] for n, _ in b.records]


keys = st.tuples(st.sampled_from(["a@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io", "f@x.io"]),
                 st.sampled_from(["*", "news"]))


@hyp_settings(max_examples=150, deadline=None)
@given(held=st.lists(st.sets(keys), max_size=3), batch=st.lists(keys, max_size=8), remove=st.booleans(),
       collide=st.booleans())
def test_csv_file_append_holds_each_key_once_and_reports_exactly_what_it_held(tmp_path_factory, held, batch,
                                                                             remove, collide):
    """Apply gives the union, remove the difference, each key on one row; each item says whether the file held it.

    With `collide`, every key hashes alike, so every lookup in the key index is a false yes that
    the file itself must settle.
    """
    path = tmp_path_factory.mktemp("merge") / "out.csv"
    with mock.patch("adapters.csv_file.key_hash", (lambda a, s: 7) if collide else csv_file.key_hash):
        sink = CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)
        for earlier in held:
            sink.apply([OptOut(a, s) for a, s in earlier])
        results = (sink.remove if remove else sink.apply)([OptOut(a, s) for a, s in batch])
    before = set().union(*held)
    on_file = [(row[0], row[1]) for row in list(csv.reader(path.open()))[1:]] if path.exists() else []
    expected = before - set(batch) if remove else before | set(batch)
    assert sorted(on_file) == sorted(expected) and len(on_file) == len(set(on_file))
    was_held = [(r.optout.address, r.optout.scope) in before for r in results]
    if remove:
        assert [r.outcome for r in results] == [APPLIED if h else ALREADY for h in was_held]
    else:
        assert [r.outcome for r in results] == [ALREADY if h else APPLIED for h in was_held]


@pytest.mark.parametrize("average", [256, 2])   # 2: the arrays grow fourfold twice on the way
def test_key_index_answers_no_exactly_and_yes_for_every_key_added(monkeypatch, average):
    import random
    monkeypatch.setattr(held_keys.KeyIndex, "_AVERAGE", average)
    rng = random.Random(5)
    values = [rng.getrandbits(64) for _ in range(60_000)]
    index = held_keys.KeyIndex(values[:30_000])
    index.add(values[30_000:50_000])
    index.add(values[:100])                                   # already held: counted once
    assert all(index.may_hold(v) for v in values[:50_000])
    assert not any(index.may_hold(v) for v in values[50_000:])
    assert len(index) == 50_000
    assert index._bits == (12 if average == 256 else 16)
    assert index.sorted_values().tolist() == sorted(set(values[:50_000]))   # what a merge writes out

"""The csv_file sink's key index: sorted hashes in a private file plus recent ones in memory.

Every test asserts what the file holds and what each apply reported; the index is only ever a
cache of the file, so a wrong index must never show in either.
"""

from __future__ import annotations

import csv
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from adapters import csv_file, held_keys
from adapters.csv_file import CsvFileAdapter, CsvFileSettings
from adapters.held_keys import HeldKeys
from state.models import ALREADY, APPLIED, OptOut

TOPICS = {"news": "Newsletter"}


@pytest.fixture
def small_bounds(monkeypatch):
    """Runs of 64 hashes and at most 50 recent ones, so a few hundred rows exercise every path."""
    monkeypatch.setattr(held_keys, "RUN", 64)
    monkeypatch.setattr(held_keys, "RECENT_LIMIT", 50)


def sink(path: Path) -> CsvFileAdapter:
    return CsvFileAdapter(CsvFileSettings(name="s", path=path), TOPICS)


def optouts(first: int, last: int) -> list[OptOut]:
    return [OptOut(f"u{i:05d}@x.io", "news" if i % 3 == 0 else "*") for i in range(first, last)]


def rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as handle:
        return [(row[0], row[1]) for row in list(csv.reader(handle))[1:] if row]


def outcomes(results) -> list[str]:
    return [r.outcome for r in results]


def test_held_keys_says_no_exactly_and_yes_for_every_hash_across_builds_and_merges(tmp_path, small_bounds):
    rng = random.Random(19)
    values = [rng.getrandbits(64) for _ in range(4000)]
    index = HeldKeys(tmp_path, values[:1000] + values[:10])        # 16 runs, repeats included
    assert index._sorted is not None and len(index) == 1000
    index.add(values[:5])                                         # repeats of hashes already on disk
    for start in range(1000, 3000, 40):                           # dozens of merges of the recent hashes
        index.add(values[start:start + 40])
    held = values[:3000]
    assert index.held(held) == set(held)
    assert index.held(values[3000:]) == set()
    assert index.held([v ^ 1 for v in held]) == set()
    assert len(index) == len(set(held))                           # each hash once in the file
    index.close()
    assert os.listdir(tmp_path) == []                             # the private files have no name


def test_appends_beyond_the_memory_bound_and_a_rebuild_keep_each_key_once(tmp_path, small_bounds):
    path = tmp_path / "out.csv"
    first = sink(path)
    for start in range(0, 600, 40):                               # 15 batches: built, then merged often
        assert outcomes(first.apply(optouts(start, start + 40))) == [APPLIED] * 40
    assert first._index is not None and first._index._sorted is not None
    assert len(first._index._sorted) > 400                        # most hashes are on disk, not in memory
    assert len(first._index._recent) <= held_keys.RECENT_LIMIT
    again = optouts(500, 650)                                     # 100 held, 50 new
    assert outcomes(first.apply(again)) == [ALREADY] * 100 + [APPLIED] * 50
    # A new process (a new adapter) rebuilds the index from the file and agrees.
    second = sink(path)
    for start in range(0, 650, 130):
        assert outcomes(second.apply(optouts(start, start + 130) + optouts(700, 701))) == (
            [ALREADY] * 130 + [APPLIED if start == 0 else ALREADY])
    assert second._index is not None and second._index._sorted is not None
    assert sorted(rows(path)) == sorted((o.address, o.scope) for o in optouts(0, 650) + optouts(700, 701))
    first.close()
    second.close()
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_an_outside_edit_makes_the_index_stale_and_the_file_decides(tmp_path, small_bounds):
    path = tmp_path / "out.csv"
    adapter = sink(path)
    for start in range(0, 300, 60):
        adapter.apply(optouts(start, start + 60))
    assert adapter._index is not None
    with path.open("a") as handle:                                # a row added by hand ...
        handle.write("hand@x.io,*,manual,user,\n")
    text = path.read_text().replace("u00007@x.io,*", "gone@x.io,*")  # ... and one changed by hand
    path.write_text(text)
    results = adapter.apply([OptOut("hand@x.io", "*"), OptOut("u00007@x.io", "*"), OptOut("gone@x.io", "*")])
    assert outcomes(results) == [ALREADY, APPLIED, ALREADY]
    results = adapter.apply([OptOut("hand@x.io", "*"), OptOut("new@x.io", "*")])
    assert outcomes(results) == [ALREADY, APPLIED]
    on_file = rows(path)
    assert len(on_file) == len(set(on_file)) == 300 + 3     # hand, u00007 again, new
    assert ("hand@x.io", "*") in on_file and ("u00007@x.io", "*") in on_file


def test_a_torn_append_is_cut_back_and_its_keys_are_not_held(tmp_path, small_bounds, monkeypatch):
    path = tmp_path / "out.csv"
    adapter = sink(path)
    for start in range(0, 200, 50):
        adapter.apply(optouts(start, start + 50))
    assert adapter._index is not None
    whole = path.read_bytes()

    def torn(fd, end, data):                                      # the crash: half the batch, no more
        adapter._marker.write_text(f"{end}\n")
        os.pwrite(fd, data[:len(data) // 2], end)
        raise OSError("killed mid-append")

    monkeypatch.setattr(adapter, "_append_durably", torn)
    with pytest.raises(OSError):
        adapter.apply(optouts(200, 260))
    assert len(path.read_bytes()) > len(whole)
    monkeypatch.undo()
    results = adapter.apply(optouts(200, 260) + optouts(0, 5))
    assert outcomes(results) == [APPLIED] * 60 + [ALREADY] * 5
    assert path.read_bytes().startswith(whole)
    on_file = rows(path)
    assert len(on_file) == len(set(on_file)) == 260
    assert not adapter._marker.exists()


def test_a_damaged_index_file_is_dropped_and_rebuilt_never_trusted(tmp_path, small_bounds):
    path = tmp_path / "out.csv"
    adapter = sink(path)
    for start in range(0, 300, 60):
        adapter.apply(optouts(start, start + 60))
    damaged = adapter._index
    assert damaged is not None and damaged._sorted is not None
    os.ftruncate(damaged._sorted._fd, 8 * 10)                    # the index file lost its end
    assert outcomes(adapter.apply(optouts(250, 310))) == [ALREADY] * 50 + [APPLIED] * 10
    assert adapter._index is not damaged
    assert outcomes(adapter.apply(optouts(0, 320))) == [ALREADY] * 310 + [APPLIED] * 10
    assert adapter._index is not None and len(adapter._index) == 320     # rebuilt from the file
    on_file = rows(path)
    assert len(on_file) == len(set(on_file)) == 320


def test_no_room_for_an_index_file_falls_back_to_reading_the_file(tmp_path, small_bounds, monkeypatch):
    path = tmp_path / "out.csv"
    adapter = sink(path)

    def no_room(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(held_keys, "_private_file", no_room)
    for start in range(0, 200, 50):
        assert outcomes(adapter.apply(optouts(start, start + 50))) == [APPLIED] * 50
    assert adapter._index is None
    assert outcomes(adapter.apply(optouts(150, 210))) == [ALREADY] * 50 + [APPLIED] * 10
    on_file = rows(path)
    assert len(on_file) == len(set(on_file)) == 210


def indexing_peak(path: Path, count: int) -> int:
    """tracemalloc's peak while the sink builds its index of a generated file of `count` rows."""
    with path.open("w") as handle:
        handle.write("email,scope,reason,origin,occurred_at\n")
        handle.writelines(f"user{i:08d}@example.com,*,imported,user,\n" for i in range(count))
    adapter = sink(path)
    adapter.apply([OptOut("first@x.io", "*")])                   # the first apply reads the file once
    tracemalloc.start()
    try:
        adapter.apply([OptOut("second@x.io", "*")])               # the second builds the index
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert adapter._index is not None and len(adapter._index) == count + 2
    adapter.close()
    return peak


def test_building_the_index_takes_memory_independent_of_the_file_size(tmp_path, monkeypatch):
    """Runs of 8,192 hashes: the peak is a run, a slice and the 512 KB table, at 30,000 rows and at 240,000."""
    monkeypatch.setattr(held_keys, "RUN", 1 << 13)
    small = indexing_peak(tmp_path / "small.csv", 30_000)
    large = indexing_peak(tmp_path / "large.csv", 240_000)
    assert large < 2_500_000                                      # 8 bytes a row would be 1.9 MB alone
    assert large < small * 1.25

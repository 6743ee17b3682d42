"""Which 64-bit key hashes a file holds, in memory bounded independently of the file's size.

`HeldKeys` answers "may the file hold this hash?" exactly when it says no. It keeps the
hashes of the most recent appends in memory (`KeyIndex`, at most `RECENT_LIMIT` of them) and
the rest sorted in a private temporary file beside the file they describe (`SortedKeys`,
looked up with `os.pread`, so the lookups cost page cache, not RSS). When the recent hashes
exceed their limit they are merged into a new sorted file.

Building and merging are external sorts with a fixed budget: hashes are sorted in runs of
`RUN` at a time and written out; the runs are then merged one slice of the hash space at a
time (the top `GROUP_BITS` bits), each slice sorted on its own. Hashes are spread evenly, so
a slice holds about 1/4096 of the keys.

The temporary file has no name (O_TMPFILE where the system has it, else removed right after
it is created): a crash leaves nothing behind, and no other process can see, reuse or
corrupt it. Its contents are derived from the file and never trusted over it: a yes is
confirmed against the file by the caller, and a sorted file whose size is not what this
process wrote is reported as `IndexDamaged`.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path

MASK = (1 << 64) - 1
RECENT_LIMIT = 1 << 18   # recent hashes held in memory (2 MB) before they are merged into the file
RUN = 1 << 16            # hashes sorted at once while building (a list of 65,536 ints: about 2.6 MB)
GROUP_BITS = 12          # a merge works on 1/4096 of the hash space at a time
LOOKUP_BITS = 16         # a lookup reads the sorted hashes that share its top 16 bits
WINDOW = 1 << 17         # at most this many hashes (1 MB) are read at once for a batch's lookups
GAP = 1 << 8             # lookups whose slices are less than 2 KB apart share one read


class IndexDamaged(Exception):
    """The private index file is not what this process wrote; the caller drops it and rebuilds."""


class KeyIndex:
    """Hashes of the (address, scope) keys a file holds, in small sorted arrays chosen by their top bits.

    `may_hold` is exact when it says no; a yes must be confirmed against the file. New hashes wait
    in a short array of their own (8 bytes each, never a Python int per hash: with tens of
    thousands of arrays, waiting lists of ints cost over 100 MB at 5,000,000) and are sorted in
    16 at a time. The number of arrays grows fourfold
    whenever they average 256 hashes, so an array stays small and adding or looking up costs the
    same at any size; memory grows by about 8 bytes a hash, with no spike (a merge of one large
    array would briefly cost tens of MB). `HeldKeys` keeps at most `RECENT_LIMIT` hashes in one.
    """

    _WAITING = 16
    _AVERAGE = 256

    def __init__(self, hashes: Iterable[int] = ()):
        self._bits = 12
        self._arrays = [array("Q") for _ in range(1 << self._bits)]
        self._waiting: list[array] = [array("Q") for _ in self._arrays]
        self._count = 0  # hashes added, repeats included (an upper bound, for growing)
        self.add(hashes)

    def may_hold(self, value: int) -> bool:
        bucket = value >> (64 - self._bits)
        found = self._arrays[bucket]
        at = bisect_left(found, value)
        return (at < len(found) and found[at] == value) or value in self._waiting[bucket]

    def add(self, values: Iterable[int]) -> None:
        waiting, shift, limit = self._waiting, 64 - self._bits, self._WAITING
        for value in values:
            pending = waiting[value >> shift]
            pending.append(value)
            if len(pending) >= limit:
                self._sort_in(value >> shift)
            self._count += 1
            if self._count > self._AVERAGE << self._bits:
                self._grow()
                waiting, shift = self._waiting, 64 - self._bits

    def added(self) -> int:
        """Hashes added since it was made, repeats included (an upper bound of its size)."""
        return self._count

    def sorted_values(self) -> array:
        """Every hash it holds, once each, in ascending order (one array, 8 bytes a hash)."""
        out = array("Q")
        for bucket in range(len(self._arrays)):
            if self._waiting[bucket]:
                self._sort_in(bucket)
            out.extend(self._arrays[bucket])
        return out

    def _sort_in(self, bucket: int) -> None:
        merged = set(self._arrays[bucket])
        merged.update(self._waiting[bucket])
        self._arrays[bucket] = array("Q", sorted(merged))
        self._waiting[bucket] = array("Q")

    def _grow(self) -> None:
        """Four times as many arrays: each sorted array splits into four, in order."""
        bits = self._bits + 2
        shift = 64 - bits
        arrays: list[array] = []
        for bucket in range(len(self._arrays)):
            if self._waiting[bucket]:
                self._sort_in(bucket)
            parts: list[list[int]] = [[], [], [], []]
            for value in self._arrays[bucket]:
                parts[(value >> shift) & 3].append(value)
            arrays.extend(array("Q", part) for part in parts)
            self._arrays[bucket] = array("Q")  # freed as we go
        self._bits, self._arrays = bits, arrays
        self._waiting = [array("Q") for _ in arrays]
        self._count = sum(len(found) for found in arrays)

    def __len__(self) -> int:
        for bucket, pending in enumerate(self._waiting):
            if pending:
                self._sort_in(bucket)
        return sum(len(found) for found in self._arrays)


def _private_file(folder: Path) -> int:
    """A read-write descriptor of a new file in `folder` that has no name."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        handle, name = tempfile.mkstemp(prefix=".keys.", dir=folder)
        os.unlink(name)
        return handle


def _starts(values: array, bits: int, first: int = 0, count: int | None = None) -> array:
    """Where each of `count` consecutive `bits`-bit prefixes (from `first`) begins in sorted `values`."""
    shift = 64 - bits
    count = (1 << bits) - first if count is None else count
    return array("Q", (bisect_left(values, (first + i) << shift) for i in range(count)))


class _Run:
    """Sorted hashes at `start` (in hashes) of a descriptor, and where each group of them begins.

    The group table (4,097 positions, 32 KB) is written to `table_fd` at `table_at` rather than
    kept, so that a build of many runs holds no table per run; a merge loads the part it needs.
    """

    def __init__(self, fd: int, start: int, values: array, table_fd: int, table_at: int):
        self.fd, self.start = fd, start
        table = _starts(values, GROUP_BITS)
        table.append(len(values))
        _write(table_fd, table.tobytes(), table_at * 8)
        self._table_fd, self._table_at = table_fd, table_at
        self._first, self._groups = 0, array("Q")

    @classmethod
    def in_memory_table(cls, fd: int, groups: array) -> _Run:
        """A run whose group table is already in memory (a sorted file's own)."""
        run = cls.__new__(cls)
        run.fd, run.start, run._table_fd, run._first, run._groups = fd, 0, None, 0, groups
        return run

    def load(self, first: int, count: int) -> None:
        """Make the table of groups `first` to `first + count - 1` available to `group`."""
        if self._table_fd is not None:
            self._first = first
            self._groups = array("Q", _read(self._table_fd, self._table_at + first, count + 1))

    def group(self, number: int) -> bytes:
        low, high = self._groups[number - self._first], self._groups[number - self._first + 1]
        return _read(self.fd, self.start + low, high - low) if high > low else b""


TABLE = (1 << GROUP_BITS) + 1  # the group table of a run: where each of the 4,096 groups begins, and the end
BLOCK = 256                   # groups whose table is loaded at once in a merge (2 KB a run)


def _read(fd: int, first: int, count: int) -> bytes:
    data = os.pread(fd, count * 8, first * 8)
    if len(data) != count * 8:
        raise IndexDamaged(f"index file ends early ({len(data)} of {count * 8} bytes at {first * 8})")
    return data


def _slot_in(few: array, many: array) -> array:
    """The sorted union of two sorted arrays without repeats, `few` slotted in between slices of `many`."""
    out, at, end = array("Q"), 0, len(many)
    for value in few:
        to = bisect_left(many, value, at)
        out.extend(many[at:to])
        at = to
        if at == end or many[at] != value:
            out.append(value)
    out.extend(many[at:])
    return out


def _write(fd: int, data: bytes, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


class SortedKeys:
    """Sorted, distinct hashes in a private file; a lookup reads one small slice of it with pread."""

    def __init__(self, fd: int, starts: array):
        self._fd = fd
        self._starts = starts  # 65,537 positions: where each top-16-bit prefix begins (512 KB)

    def __len__(self) -> int:
        return self._starts[-1]

    @classmethod
    def merged(cls, folder: Path, runs: list[_Run], two_distinct: bool = False) -> SortedKeys:
        """One sorted file of the distinct hashes of `runs`, built 1/4096 of the hash space at a time.

        `two_distinct`: there are two runs, each without repeats (the sorted file and the recent
        hashes); the few recent ones are then slotted in between slices of the other, which costs
        a copy of the file rather than a Python number per hash.
        """
        fd = _private_file(folder)
        try:
            starts, position, per_group = array("Q"), 0, 1 << (LOOKUP_BITS - GROUP_BITS)
            for group in range(1 << GROUP_BITS):
                if group % BLOCK == 0:
                    for run in runs:
                        run.load(group, BLOCK)
                if two_distinct:
                    values = _slot_in(array("Q", runs[0].group(group)), array("Q", runs[1].group(group)))
                else:
                    slice_ = array("Q")
                    for run in runs:
                        slice_.frombytes(run.group(group))
                    values = array("Q", sorted(set(slice_)))  # a run may repeat a hash (a file's duplicate rows)
                starts.extend(position + at for at in _starts(values, LOOKUP_BITS, group * per_group, per_group))
                if values:
                    _write(fd, values.tobytes(), position * 8)
                    position += len(values)
            starts.append(position)
            return cls(fd, starts)
        except BaseException:
            os.close(fd)
            raise

    def check(self) -> None:
        """Raise IndexDamaged unless the file is exactly as long as what was written to it."""
        size = os.fstat(self._fd).st_size
        if size != len(self) * 8:
            raise IndexDamaged(f"index file is {size} bytes, {len(self) * 8} expected")

    def held(self, values: list[int]) -> set[int]:
        """Of sorted `values`, those it holds.

        Each lookup needs the hashes that share its top 16 bits; the slices of lookups close to
        one another are read together, up to WINDOW hashes a read, so a batch that is dense in
        the file reads it in a few large preads rather than one small pread per lookup.
        """
        found, starts, shift, fd, count = set(), self._starts, 64 - LOOKUP_BITS, self._fd, len(values)
        i = 0
        while i < count:
            low, high = starts[values[i] >> shift], starts[(values[i] >> shift) + 1]
            j = i + 1
            while j < count:
                bucket = values[j] >> shift
                next_low, next_high = starts[bucket], starts[bucket + 1]
                if next_low - high > GAP or next_high - low > WINDOW:
                    break
                high, j = max(high, next_high), j + 1
            if high > low:
                window = array("Q", _read(fd, low, high - low))
                size = len(window)
                for value in values[i:j]:
                    at = bisect_left(window, value)
                    if at < size and window[at] == value:
                        found.add(value)
            i = j
        return found

    def as_run(self) -> _Run:
        return _Run.in_memory_table(self._fd, array("Q", self._starts[::1 << (LOOKUP_BITS - GROUP_BITS)]))

    def close(self) -> None:
        os.close(self._fd)


class HeldKeys:
    """The hashes a file holds: the older ones sorted in a private file, the recent ones in memory.

    `held` is exact when it leaves a hash out; a hash it returns may be a collision and must be
    confirmed against the file. Memory: at most `RECENT_LIMIT` recent hashes (2 MB), the 512 KB
    table of where each prefix begins in the sorted file, and, while building or merging, one
    run of `RUN` hashes or one 1/4096 slice of the hashes. Disk: 8 bytes a distinct hash.
    """

    def __init__(self, folder: Path, hashes: Iterable[int] = ()):
        self._folder = folder
        self._sorted: SortedKeys | None = None
        self._recent = KeyIndex()
        self._build(hashes)

    def _build(self, hashes: Iterable[int]) -> None:
        """Sort the hashes in runs of RUN written to a private file, then merge the runs."""
        fd, tables = _private_file(self._folder), None
        try:
            tables = _private_file(self._folder)
            runs, position, chunk = [], 0, array("Q")
            for value in hashes:
                chunk.append(value)
                if len(chunk) >= RUN:
                    position = self._spill(fd, tables, chunk, position, runs)
                    chunk = array("Q")
            if chunk:
                position = self._spill(fd, tables, chunk, position, runs)
            if runs:
                self._sorted = SortedKeys.merged(self._folder, runs)
        finally:
            os.close(fd)
            if tables is not None:
                os.close(tables)

    @staticmethod
    def _spill(fd: int, tables: int, chunk: array, position: int, runs: list[_Run]) -> int:
        values = array("Q", sorted(chunk))
        _write(fd, values.tobytes(), position * 8)
        runs.append(_Run(fd, position, values, tables, len(runs) * TABLE))
        return position + len(values)

    def held(self, values: Iterable[int]) -> set[int]:
        """Of `values`, those it may hold (recent ones in memory, the rest by pread of the sorted file)."""
        recent = self._recent.may_hold
        found, rest = set(), []
        for value in values:
            (found.add if recent(value) else rest.append)(value)
        if rest and self._sorted is not None:
            self._sorted.check()
            found |= self._sorted.held(sorted(rest))
        return found

    def add(self, values: Iterable[int]) -> None:
        """Hashes of keys just appended; merged into the sorted file once RECENT_LIMIT wait in memory."""
        self._recent.add(values)
        if self._recent.added() > RECENT_LIMIT:
            self._merge_recent()

    def _merge_recent(self) -> None:
        fd = _private_file(self._folder)
        try:
            values = self._recent.sorted_values()
            _write(fd, values.tobytes(), 0)
            runs = [_Run(fd, 0, values, fd, len(values))]  # its table follows its hashes
            del values
            if self._sorted is not None:
                self._sorted.check()
                runs.append(self._sorted.as_run())
            merged = SortedKeys.merged(self._folder, runs, two_distinct=len(runs) == 2)
        finally:
            os.close(fd)
        if self._sorted is not None:
            self._sorted.close()
        self._sorted, self._recent = merged, KeyIndex()

    def __len__(self) -> int:
        if self._sorted is None:
            return len(self._recent)
        return len(self._sorted) + len(self._recent) - len(self._sorted.held(self._recent.sorted_values()))

    def close(self) -> None:
        """Close the private file (the system removes it: it has no name)."""
        if self._sorted is not None:
            self._sorted.close()
            self._sorted = None

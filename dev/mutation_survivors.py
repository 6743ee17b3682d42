"""List the mutants a mutmut run did not kill, each with its class, for docs/mutation-survivors.txt.

Run after `mutmut run` from the project folder:

    .venv/bin/python dev/mutation_survivors.py > docs/mutation-survivors.txt

A mutant is classed "equivalent: SQL case" when its only change is the letter case of SQL text outside
quoted SQL literals (SQLite reads keywords and names without regard to case), "equivalent: reviewed"
when it matches a rule in REVIEWED below (with the reason), and "open" otherwise: an open survivor needs a
test. The summary line gives the score with and without the equivalent ones.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

MUTMUT = [sys.executable, "-m", "mutmut"]
SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|AND|OR|IN|IS|NULL|NOT|EXISTS|COALESCE|ORDER BY|"
                      r"GROUP BY|LIMIT|VALUES|SET|JOIN|ON|AS|CASE|WHEN|THEN|ELSE|END|count|max|min|json_extract|json_each)\b", re.I)
SQL_LITERAL = re.compile(r"'[^']*'")

# Mutants reviewed by hand and found harmless: (mutated function, a regex the mutated line matches, why).
# Matched by function and text rather than by number, so the list holds across runs.
REVIEWED: list[tuple[str, str, str]] = [
    ("state.imports.xǁ_Stagerǁ__init__", r"maxsize=", "the queue's bound only limits memory held"),
    ("state.imports.xǁ_Stagerǁ__init__", r"name=|Thread\(target=self\._run, daemon", "the stager thread's name is for debugging"),
    ("state.imports.xǁ_Stagerǁ__init__", r"daemon=", "the stager is always joined before the import returns"),
    ("state.imports.xǁ_Stagerǁ__init__", r"_cancelled = None", "None is as false as False"),
    ("state.imports.xǁ_Stagerǁ__exit__", r"_cancelled = None",
     "cancelling only saves work: the failed import's transaction is rolled back either way"),
    ("state.imports.xǁ_Stagerǁ_run", r"_error is not None and self\._cancelled",
     "later batches are still inserted, then the stager's error fails the import and all is rolled back"),
    ("state.imports.xǁ_Stagerǁ_run", r"ensure_ascii", "SQLite's json_each decodes \\u escapes to the same text"),
    ("state.imports.xǁ_Stagerǁ_run", r"u0000", "either path inserts the same rows (the NUL path row by row)"),
    ("state.imports.x__batches", r"islice\(iterator, None\)", "one batch of everything: memory only"),
    ("state.imports.x_(run_import|_import)", r"len\(valid\) <= len\(batch\)", "a batch without rejected rows is scanned for none"),
    ("state.dashboard.x_first_seq_at_or_after", r"\(low \+ high\) / 2", "a fractional probe finds the same first seq"),
    ("state.dashboard.xǁDailyOptOutCounterǁ__init__", r'= ""', "a first refresh recounts either way"),
    ("state.dashboard.xǁDailyOptOutCounterǁrefresh", r"end <= self\._last_seq", "a recount when nothing is new gives the same counts"),
    ("state.dashboard.xǁDailyOptOutCounterǁrefresh", r"- 2$", "the extra event read lies before the window and is dropped"),
    ("state.dashboard.xǁDailyOptOutCounterǁrefresh", r'"XX\?XX"', "a 'suppressed' event always has a reason and a source"),
    ("state.dashboard.xǁDailyOptOutCounterǁrefresh", r"_last_seq is None and end <",
     "differs only for a store swapped under the same id with a shorter log"),
    ("state.store.x__details_json", r"separators", "only the whitespace of the stored JSON changes"),
    ("state.store.xǁStoreǁstaged_optouts", r"-2 if limit is None", "SQLite reads any negative LIMIT as none"),
    ("state.store.xǁStoreǁpause", r"paused=2", "the flag is read back as a bool"),
    ("state.store.xǁStoreǁ(iter_suppressions|_suppressions_sql)", r"sql if \(count\) or True",
     "SQLite: suppressions is WITHOUT ROWID on (address, scope), so its scan is in that order anyway "
     "(PostgreSQL's order is checked by test_store_contract's reads test on that backend)"),
    ("state.store.xǁStoreǁmissing_at_source", r"lru_cache\(maxsize=|10_?00[01]|>= 10_000|occurred_at or shared",
     "only how many texts are shared in memory changes, not their values"),
    ("state.snapshots.x_record_deletions", r"sort_keys", "the two keys are in sorted order already"),
    ("connector.engine.xǁCycleReportǁkeep", r"\(room is None\) and False", "islice(more, None) keeps everything"),
    ("connector.engine.xǁEngineǁ_scrubbed", r"and False else replace", "a copy with the same message"),
    ("connector.engine.xǁEngineǁ_promote_within_guard", r"staged_optouts\(name, (None)?\)",
     "keep() trims the list to the limit anyway: memory only"),
    ("connector.engine.xǁEngineǁ_promote_within_guard", r"report\.added = ", "promote runs once per report"),
    ("state.resubscribes.x__refusal", r"replace\(", "no reason that reaches this line has an underscore (both are caught above)"),
    ("state.failpoint.x__parse", r"rpartition|return None, 1,", "a value with one colon splits the same; N is unused when unarmed"),
    ("state.resubscribes.x_record", r"\(key in wanted\) or True|when >= in_page",
     "only the keys of wanted re-subscribes are looked up; an equal time stores the same value"),
    ("state.resubscribes.x__latest_optout_at", r"\(dated\) or True", "a stored or staged opt-out always has a time"),
    ("state.resubscribes.x__event", r"sort_keys", "the details' key order in the stored JSON only"),
    ("state.resubscribes.x__lift", r"separators", "only the whitespace of the stored JSON changes"),
    ("state.store.x__details_json", r"json\.dumps\(details, \)", "only the whitespace of the stored JSON changes"),
    ("state.store.xǁStoreǁtruncate_wal", r"busy_ms: int = 10[12]", "a millisecond more of waiting"),
    ("state.store.xǁStoreǁ(stage_from_source_set|add_to_source_set|promote)", r'"(SOURCE_SET|STAGED)"|_echo_sql\(\'N\'',
     "a table name or alias given to SQL in upper case: SQLite reads it the same"),
    ("state.store.xǁStoreǁ(iter_suppressions|_suppressions_sql)", r"sql if \(count\) and False",
     "a count with an ORDER BY is the same one row"),
    ("state.store.xǁStoreǁ_load_incoming", r'table: str = "INCOMING"|ORIGIN = EXCLUDED\.ORIGIN',
     "a table or column name given to SQL in upper case: SQLite reads names without regard to case"),
    ("state.store.xǁStoreǁ_load_incoming", r"json\.dumps\(rows, (separators=None)?\)",
     "only the whitespace of the JSON array handed to json_each changes; it reads the same values"),
    ("state.store.xǁStoreǁ_record_stronger", r"_stronger_sql\('(N', 's|n', 'S)'\)",
     "a table alias given to SQL in upper case: SQLite reads it the same"),
    ("state.store.xǁStoreǁmissing_at_source", r'last = \("", "XXXX"\)',
     "the first page starts after an empty address; no suppression has one (addresses are normalised)"),
    ("state.snapshots.x_members", r"batch: int = 501",
     "only how many contacts one batch (one recording transaction) holds; the adapter splits its own calls"),
    ("state.snapshots.x_members", r'last = \("", "XXXX"\)',
     "the first batch starts after an empty address; no snapshot contact has one (they come from suppressions)"),
    ("state.snapshots.x_record_deletions", r'"snapshot": name}, \)',
     "without sort_keys the same text: contact_id and snapshot are in sorted order already"),
    ("connector.engine.xǁEngineǁ_reconcile",
     r"save_cursor=(None|True)|Page\(resubscribes=page\.resubscribes\), resubscribe_policy",
     "the page handed to ingest_page is built with the re-subscribes only and no cursor, so no cursor "
     "is saved whatever save_cursor says (a full read's own cursor never reaches the store)"),
]


# Reviewed after the pipelined push, the merge diff and the webhook receipts joined the run (a block of its
# own, so that it merges beside rules added to the list above).
REVIEWED += [
    ("connector.engine.xǁEngineǁ_remove_lifted_by_recipients", r"finish_removal\(self\.store, name, seq, optout, None,",
     "None is as false as False: the removal is recorded as failed either way"),
    ("connector.engine.xǁ_Senderǁ__init__", r'self\.context: tuple \| None = ""',
     "the context is read only with the call that send() stores with it"),
    ("connector.engine.xǁ_Senderǁ__exit__", r"shutdown\(wait=(None|False)\)",
     "the pool's one call was waited for just above; its idle thread ends either way"),
    ("connector.engine.xǁ_Senderǁsend", r"max_workers=(None|2)|ThreadPoolExecutor\(thread_name_prefix=",
     "one call at a time either way: _apply sends only after _settle took the previous call"),
    ("connector.engine.xǁEngineǁ_apply", r"^\s*return False$",
     "the empty batch is the push's last: the _settle and record that follow it in push have nothing left"),
    ("connector.engine.xǁEngineǁ_settle", r"_record_unrecorded\(None, sender\)",
     "sender.unrecorded is always empty when _settle starts (every _apply records it before returning)"),
    ("connector.engine.xǁEngineǁ_settle", r"report\.parked = len\(parked\)",
     "a push stops at its first batch with parked items, so parked is added to once per report"),
    ("state.merge_diff.xǁSinkMergeǁ__init__", r'_last: tuple\[str, str\] = \("", "XXXX"\)',
     "no address is empty, so every key of the read sorts after it either way"),
    ("state.merge_diff.xǁSinkMergeǁ(feed|finish)", r"len\((self\._)?missing\) > FLUSH",
     "only when the missing seqs are written changes (one seq later), not what is written"),
    ("state.merge_diff.xǁSinkMergeǁ_store_keys", r"keyed\.sort\(key=None\)",
     "keys that tie (topics held as all-email) differ only in seq; they are consumed or found missing together"),
    ("state.receipts.x_known", r"range\(0, len\(keys\), \)",
     "a step of 1 finds the same keys by more, overlapping queries"),
    ("state.imports.xǁ_Stagerǁ_run", r"json\.dumps\(addresses, \)",
     "SQLite's json_each decodes \\u escapes to the same text (ensure_ascii is the default then)"),
    ("state.addresses.x_normalise_address", r"len\(address\) < _SHORT and",
     "an address of exactly _SHORT characters takes the full check, which accepts exactly the same"),
    ("state.addresses.x_normalise_address", r"address\.partition\(\"@\"\)\[0\]",
     "an address _ADDRESS matched has exactly one @"),
    ("state.addresses.x_explain_invalid", r"address\.rpartition\(\"@\"\)",
     "the address has exactly one @ here (more is explained above)"),
    ("connector.engine.xǁEngineǁ_reapply_missing", r"merged: bool = True\)",
     "its one caller always passes merged="),
    ("state.imports.xǁ_Stagerǁ_run", r"^\s*break  # drain",
     "after the stager's error, stage() and leaving raise that same error whether the thread drains or stops "
     "(a put to a stopped thread gives up: _put)"),
    ("connector.engine.xǁEngineǁpush", r"\(batch and skipped or scan_from > start\)",
     "a batch or a skipped item means something was scanned, so the test is scan_from > start either way"),
    ("connector.engine.xǁEngineǁpush", r"scan_from >= start\)",
     "with nothing scanned, the extra empty record_push moves the watermark to where it is"),
]


# Reviewed after the run of the evening of 2026-11-28 (stopped at 2,929 of 3,556 mutants).
REVIEWED += [
    ("state.addresses.x_normalise_block", r"len\(raws\) - 2",
     "the one-pass path is never taken; text by text gives the same results, only slower"),
    ("state.addresses.x_normalise_block", r"max\(map\(len, stripped\)\) < _SHORT",
     "a block whose longest text is exactly _SHORT goes text by text, which takes it the same"),
    ("state.addresses.x_normalise_block", r"return text\.split\(None\)",
     "lines _SHORT_LINES matched hold no whitespace, so splitting at whitespace splits at the line breaks"),
    ("state.store.x__outcome_json", r"result\.outcome not in _OUTCOME_JSON",
     "every outcome is one of the four in _OUTCOME_JSON, whose texts are the json.dumps the other path writes"),
    ("connector.engine.xǁEngineǁ_reconcile", r"prefetched\(adapter\.read_all\(\), (None)?\)",
     "the loop checks self.stop after every page, and leaving it ends the reading thread (prefetched): "
     "without the event the thread may read the one page in hand further, which is dropped"),
]


# Reviewed after the PostgreSQL port (the run of b52a0d7): aliases handed to the dialect's helpers.
REVIEWED += [
    ("state.(store.x__echo_sql|snapshots.x_candidates|store.xǁStoreǁ_suppressions_sql)", r"[\"'][A-Z]\.[A-Z_]+[\"']",
     "a table alias and column given to SQL in upper case: SQLite, and PostgreSQL unquoted, read them the same"),
    ("state.store_copy.xǁSqliteTablesǁload", r"islice\(rows, None\)", "one batch of everything: memory only"),
    ("state.store_copy.x__encoded", r'encode\("UTF-8"', "Python reads codec names without regard to case"),
    ("state.schema.x_migrate", r"range\((current - 1, )?SCHEMA_VERSION \+ 1\)",
     "a migration the store already has is skipped by the user_version check inside the loop"),
    ("state.schema.x__database", r"recursive_triggers=(None|True)|execute_plugins=(None|True)|Connection\(conn\), (recursive|execute)|recursive_triggers=False, \)",
     "the schema has no triggers and no sqlite-utils plugin is installed with optout-sync"),
    ("state.schema.x_m4_hardening", r'add_column\("(value|dismissed_reason)", (None)?\)|db\["FAILURES"\]',
     "sqlite-utils' add_column types a column TEXT by default and SQLite finds the table in any letter case "
     "(the schema text is the same: test_schema_versions)"),
    ("state.store.xǁStoreǁ__init__", r"busy_timeout: float = 31\.0", "a second more of waiting for a lock"),
    ("state.store.xǁStoreǁ__init__", r"target, uri = self\.path, True|mode=rw\", False|check_same_thread=False, (uri=None)?\)",
     "Python's SQLite here is built with URI filenames on: a name is read as a URI only when it begins with "
     "file:, whatever uri= says (test_mutation_gaps_schema holds what create=False must do)"),
    ("state.store.xǁStoreǁ__init__", r'create_function\("(shift_time|SHIFT_TIME)", 2, _shift_time, (deterministic=(None|False))?\)|"SHIFT_TIME"',
     "SQLite finds functions in any letter case, and shift_time is used in no index, where only a "
     "deterministic function may be"),
    ("state.store.xǁStoreǁ__init__", r"_temp_ready = None", "None is as false as False"),
    ("state.store.x__create_private_file", r'"XX-(wal|shm)XX"',
     "defence in depth: SQLite 3.40 does not replay a -wal left beside a new, empty database file (the file is "
     "in rollback mode until the store turns WAL on), so the store is empty either way"),
]


def run(*args: str) -> str:
    return subprocess.run([*MUTMUT, *args], capture_output=True, text=True, check=False).stdout


def changed_lines(name: str) -> tuple[str, str]:
    from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant  # mutmut's own `show`, in-process

    diff = get_diff_for_mutant(name, path=find_mutant(name).path).splitlines()
    old = "\n".join(line[1:] for line in diff if line.startswith("-") and not line.startswith("---"))
    new = "\n".join(line[1:] for line in diff if line.startswith("+") and not line.startswith("+++"))
    return old, new


def only_sql_case(old: str, new: str) -> bool:
    """True when the change is letter case alone, in SQL text, outside its quoted literals."""
    if old == new or old.lower() != new.lower() or not SQL_WORD.search(old):
        return False
    return SQL_LITERAL.findall(old) == SQL_LITERAL.findall(new)


def main() -> int:
    results = [line.strip().rsplit(": ", 1) for line in run("results", "--all", "true").splitlines()
               if ": " in line]
    counts = Counter(status for _, status in results)
    rows = []
    for name, status in results:
        if status in ("killed", "timeout", "not checked"):
            continue
        old, new = changed_lines(name) if status == "survived" else ("", "")
        why = next((why for function, pattern, why in REVIEWED
                    if re.fullmatch(function, name.split("__mutmut_")[0]) and re.search(pattern, new)), None)
        if why:
            kind = "equivalent: reviewed: " + why
        elif status == "survived" and only_sql_case(old, new):
            kind = "equivalent: SQL case"
        else:
            kind = "open"
        rows.append((name, status, kind))
    print("# Mutants not killed by the last mutmut run (see docs/testing.md). One per line: name, status,")
    print("# class. `mutmut show NAME` prints the mutation.")
    for row in rows:
        print("\t".join(row))
    classes = Counter(":".join(kind.split(":")[:2]) for _, _, kind in rows)
    killed = counts["killed"] + counts["timeout"]
    checked = sum(counts.values()) - counts["not checked"]
    equivalent = sum(n for kind, n in classes.items() if kind.startswith("equivalent"))
    print(f"# by status: {dict(counts)}; not killed by class: {dict(classes)}")
    print(f"# score: {killed / checked:.1%} of {checked} checked; without the {equivalent} equivalent ones: "
          f"{killed / (checked - equivalent):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

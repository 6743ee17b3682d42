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
                      r"GROUP BY|LIMIT|VALUES|SET|JOIN|ON|AS|count|max|min|json_extract|json_each)\b", re.I)
SQL_LITERAL = re.compile(r"'[^']*'")

# Mutants reviewed by hand and found harmless: (mutated function, a regex the mutated line matches, why).
# Matched by function and text rather than by number, so the list holds across runs.
REVIEWED: list[tuple[str, str, str]] = []


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
                    if name.split("__mutmut_")[0] == function and re.search(pattern, new)), None)
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

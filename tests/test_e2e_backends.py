"""End-to-end on both store backends: an import with its confirmed count, a lift with its propagation
and a reconcile, through the real `optout-sync` processes (the daemon and the CLI), the store read
back through open_store (tests/backend_fixtures.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .process import Daemon, run_cli, wait_for
from .test_e2e_daemon import folder_settings, sink_addresses, sink_rows

pytestmark = pytest.mark.e2e

IMPORTED = ["imp1@example.com", "imp2@example.com", "imp3@example.com"]


def cli(settings: Path, *args: str):
    result = run_cli("--config", str(settings), *args, timeout=120)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


def write_sink(tmp_path: Path, rows: list[dict]) -> None:
    """Rewrite the sink file by hand (someone edited it): only `rows` stay."""
    path = tmp_path / "out" / "suppressions.csv"
    lines = ["email,scope,reason,origin,occurred_at"]
    lines += [",".join(row[key] for key in ("email", "scope", "reason", "origin", "occurred_at")) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_import_lift_and_reconcile_on_either_backend(tmp_path, store_backend):
    settings = folder_settings(tmp_path, store=store_backend.store)
    listing = tmp_path / "list.csv"
    listing.write_text("email\n" + "".join(f"{a}\n" for a in IMPORTED) + "IMP2@example.com\nnot-an-address\n",
                       encoding="utf-8")
    with Daemon(settings) as daemon:
        wait_for(lambda: (tmp_path / "out" / "suppressions.csv").exists(), timeout=30)  # the sink has cycled

        # Import: a preview changes nothing, a wrong count is refused, the exact count applies it.
        preview = cli(settings, "import", str(listing))
        assert preview.returncode == 0 and "--confirm 3" in preview.stdout, preview.stdout + preview.stderr
        wrong = cli(settings, "import", str(listing), "--confirm", "4")
        assert wrong.returncode == 3 and "not 4" in wrong.stderr, wrong.stdout + wrong.stderr
        with store_backend.open(settings) as store:
            assert store.count_suppressions() == 0
        done = cli(settings, "import", str(listing), "--confirm", "3", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["applied"], report["new"], report["duplicates"], report["rejected"]) == (True, 3, 1, 1)
        wait_for(lambda: sink_addresses(tmp_path) == set(IMPORTED), timeout=20)

        # Lift with propagation while the daemon runs: it leaves the store and the sink.
        lifted = cli(settings, "lift", "imp1@example.com", "--scope", "*", "--legal-basis", "consent",
                     "--explanation", "asked to be mailed again", "--propagate")
        assert lifted.returncode == 0, lifted.stdout + lifted.stderr
        assert "  sink: removed" in lifted.stdout, lifted.stdout
        assert sink_addresses(tmp_path) == {"imp2@example.com", "imp3@example.com"}
        time.sleep(2.5)  # two more cycles of the daemon: nothing puts it back
        assert sink_addresses(tmp_path) == {"imp2@example.com", "imp3@example.com"}
        assert daemon.terminate(timeout=15) == 0

    # Reconcile (the daemon stopped, so the command runs it): a row edited out of the sink by hand
    # comes back, and the lifted opt-out is not re-applied.
    write_sink(tmp_path, [row for row in sink_rows(tmp_path) if row["email"] != "imp3@example.com"])
    reconciled = cli(settings, "reconcile", "sink")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "sink: read 1, new 0, missing at source 1, re-applied 1, failed 0" in reconciled.stdout, reconciled.stdout
    assert sink_addresses(tmp_path) == {"imp2@example.com", "imp3@example.com"}

    with store_backend.open(settings) as store:
        assert {row[0] for row in store.iter_suppressions()} == {"imp2@example.com", "imp3@example.com"}
        assert store.suppression("imp2@example.com")["source"] == "import"
        history = [(e["kind"], e["target"], e["legal_basis"]) for e in store.events_for("imp1@example.com")]
        assert history == [("suppressed", None, None), ("applied", "sink", None), ("lifted", None, "consent"),
                           ("removed", "sink", None)]
        kinds = [e["kind"] for e in store.events_for("imp3@example.com")]
        assert kinds.count("suppressed") == 1 and kinds.count("applied") >= 1

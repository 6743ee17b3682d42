"""End-to-end: the real `optout-sync run` process between a CSV folder, the store and a served fake HubSpot."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from .conftest import write_settings
from .fakes.hubspot import FakeHubSpot
from .fakes.serve import serve
from .process import Daemon, run_cli, wait_for

# SQLite only, for time: the vendors' side is tested here; the store's on both backends in test_e2e_backends.py.
pytestmark = pytest.mark.e2e

TOKEN = "pat-na1-e2e-secret-token"


def sink_rows(tmp_path: Path) -> dict[str, dict]:
    path = tmp_path / "out" / "suppressions.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        return {(row["email"], row["scope"]): row for row in csv.DictReader(handle)}


def test_opt_outs_flow_both_ways_between_a_csv_folder_and_hubspot(tmp_path):
    fake = FakeHubSpot(TOKEN)
    with serve(fake.handle) as url:
        settings = write_settings(tmp_path, [
            {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.2},
            {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": 1},
            {"name": "hubspot", "type": "hubspot", "token": TOKEN, "base_url": url, "interval": 1,
             "topics": {"newsletter": "101"}, "initial_lookback": "1h", "overlap": "1m",
             "legal_basis": "LEGITIMATE_INTEREST_OTHER", "legal_basis_explanation": "Opted out in our shop"},
        ], topics={"newsletter": "News"}, store={"path": "data/store.db"})
        settings.chmod(0o600)
        with Daemon(settings) as daemon:
            wait_for(lambda: "started" in daemon.log())
            # CSV -> store -> HubSpot (and the sink).
            inbox = tmp_path / "inbox"
            inbox.mkdir()
            (inbox / ".list.part").write_text("email,scope,reason\nAnn@Example.com,,unsubscribed\n"
                                              "bob@example.com,newsletter,\n", encoding="utf-8")
            (inbox / ".list.part").rename(inbox / "list.csv")
            wait_for(lambda: fake.opted_out_of_all("ann@example.com")
                     and fake.status_of("bob@example.com", 101) == "UNSUBSCRIBED", timeout=15)
            # HubSpot -> store -> the sink.
            fake.recipient_unsubscribes_all("carol@example.com")
            fake.bounce("dave@example.com")
            fake.recipient_unsubscribes("erin@example.com", 101)
            wait_for(lambda: {("carol@example.com", "*"), ("dave@example.com", "*"),
                              ("erin@example.com", "newsletter")} <= set(sink_rows(tmp_path)), timeout=15)
            history = run_cli("--config", str(settings), "history", "carol@example.com")
            assert daemon.terminate(timeout=10) == 0
    rows = sink_rows(tmp_path)
    assert {("ann@example.com", "*"), ("bob@example.com", "newsletter")} <= set(rows)
    assert (rows[("carol@example.com", "*")]["reason"], rows[("carol@example.com", "*")]["origin"]) == (
        "unsubscribed", "recipient")
    assert (rows[("dave@example.com", "*")]["reason"], rows[("dave@example.com", "*")]["origin"]) == (
        "hard_bounce", "system")
    assert history.returncode == 0 and "from hubspot" in history.stdout
    # The CSV opt-outs reached HubSpot with the legal basis; nothing was subscribed or created there,
    # and HubSpot's own opt-outs were not written back to it.
    assert fake.prefs["bob@example.com"].subs[101]["legalBasis"] == "LEGITIMATE_INTEREST_OTHER"
    assert fake.api_subscribes == [] and fake.contacts == {}
    assert not fake.calls("/communication-preferences/v3/")
    assert not [r for r in fake.calls("unsubscribe-all", "POST") if "carol@example.com" in str(r.body) + r.path]
    log = daemon.log()
    assert TOKEN not in log and "cycle adapter=hubspot" in log

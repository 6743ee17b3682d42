"""End-to-end: the real `optout-sync run` process and a served fake HubSpot where one person re-subscribes
themselves (released there, never re-applied) and an admin re-subscribes another (drift, re-applied)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from .conftest import write_settings
from .fakes.hubspot import FakeHubSpot
from .fakes.serve import serve
from .process import Daemon, run_cli, wait_for

# SQLite only, for time: the vendors' side is tested here; the store's on both backends in test_e2e_backends.py.
pytestmark = pytest.mark.e2e

TOKEN = "pat-na1-e2e-secret-token"


def test_a_recipients_resubscribe_is_honoured_and_an_admins_is_re_applied(tmp_path):
    fake = FakeHubSpot(TOKEN)
    with serve(fake.handle) as url:
        settings = write_settings(tmp_path, [
            {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.2},
            {"name": "hubspot", "type": "hubspot", "token": TOKEN, "base_url": url, "interval": 1,
             "reconcile_every": "2s", "initial_lookback": "1h", "overlap": "1m"},
        ], store={"path": "data/store.db"})
        settings.chmod(0o600)
        config = ("--config", str(settings))
        with Daemon(settings) as daemon:
            wait_for(lambda: "started" in daemon.log())
            inbox = tmp_path / "inbox"
            inbox.mkdir()
            (inbox / ".list.part").write_text("email,reason,occurred_at\nann@example.com,unsubscribed,2020-01-01\n"
                                              "bob@example.com,unsubscribed,2020-01-01\n", encoding="utf-8")
            (inbox / ".list.part").rename(inbox / "list.csv")
            wait_for(lambda: fake.opted_out_of_all("ann@example.com") and fake.opted_out_of_all("bob@example.com"),
                     timeout=15)

            fake.recipient_subscribes("ann@example.com")  # SOURCE_RECIPIENT
            fake.admin_subscribes("bob@example.com")      # SOURCE_HUBSPOT_CUSTOMER
            # A reconcile puts bob's opt-out back; ann's stays released through later reconciles.
            wait_for(lambda: fake.opted_out_of_all("bob@example.com"), timeout=20)
            reconciles = daemon.log().count("reconcile adapter=hubspot")
            wait_for(lambda: daemon.log().count("reconcile adapter=hubspot") >= reconciles + 2, timeout=20)
            assert not fake.opted_out_of_all("ann@example.com")

            ann = run_cli(*config, "history", "ann@example.com")
            bob = run_cli(*config, "history", "bob@example.com")
            export = run_cli(*config, "export")
            status = run_cli(*config, "status", "--json")
            assert daemon.terminate(timeout=10) == 0

    assert ann.returncode == 0 and "re-subscribed at hubspot by the recipient (all email)" in ann.stdout
    assert "released at hubspot only" in ann.stdout and "hubspot_source=SOURCE_RECIPIENT" in ann.stdout
    assert bob.returncode == 0 and "re-subscribe at hubspot not honoured: made by admin" in bob.stdout
    rows = {row["email"]: row for row in csv.DictReader(io.StringIO(export.stdout))}
    assert (rows["ann@example.com"]["released_at"], rows["bob@example.com"]["released_at"]) == ("hubspot", "")
    data = json.loads(status.stdout)
    assert data["releases"] == 1 and data["suppressions"] == 2
    assert {row["adapter"]: row["released"] for row in data["adapters"]} == {"inbox": 0, "hubspot": 1}
    assert fake.api_subscribes == []  # nothing ever subscribed anyone
    assert TOKEN not in daemon.log()

"""Clean-up of bounced and spam-reporting contacts: static snapshot from the store, count-confirmed delete.

The fake HubSpot is served on a real socket so the library functions and the
CLI build their adapter exactly as the daemon does.
"""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from connector import cleanup
from connector.cli import main
from connector.settings import load_settings
from state import snapshots
from state.errors import InputError, RefusedError
from state.lifts import lift
from state.models import OptOut, Page
from state.store import Store

from .conftest import write_settings
from .fakes.hubspot import FakeHubSpot
from .fakes.serve import serve

TOKEN = "pat-na1-cleanup-token"


@pytest.fixture
def world(tmp_path):
    """(settings path, fake, store path) with a hubspot adapter pointed at the served fake."""
    fake = FakeHubSpot(TOKEN)
    with serve(fake.handle) as url:
        path = write_settings(tmp_path, [
            {"name": "hubspot", "type": "hubspot", "token": TOKEN, "base_url": url, "role": "write"},
            {"name": "list", "type": "csv_file", "path": "out.csv"}])
        yield path, fake, tmp_path / "store.db"


def seed(store_path, optouts: list[OptOut], source: str = "inbox") -> None:
    with Store(store_path) as store:
        store.ingest_page(source, Page(optouts))
        store.promote(source)


def bounce(address: str, day: str, category: str | None = "unknown_user", origin: str = "system") -> OptOut:
    return OptOut(address, "*", "hard_bounce", origin, f"{day}T10:00:00+00:00",
                  {"bounce_category": category} if category else None)


def test_snapshot_is_built_from_store_events_not_live_properties(world):
    path, fake, store_path = world
    settings = load_settings(path)
    ids = {a: fake.add_contact(a) for a in ["in1@example.com", "in2@example.com", "early@example.com",
                                             "policy@example.com", "lifted@example.com"]}
    # HubSpot still shows an old bounce reason on this contact; the store never saw a bounce for it.
    fake.add_contact("unbounced@example.com", hs_email_hard_bounce_reason_enum="UNKNOWN_USER")
    seed(store_path, [bounce("in1@example.com", "2024-03-02"), bounce("in2@example.com", "2024-03-30"),
                      bounce("nocontact@example.com", "2024-03-05"), bounce("early@example.com", "2024-01-10"),
                      bounce("policy@example.com", "2024-03-06", category="policy"),
                      bounce("lifted@example.com", "2024-03-07", origin="user"),
                      OptOut("spam@example.com", "*", "spam_complaint", "system", "2024-03-08T00:00:00+00:00")])
    with Store(store_path) as store:
        lift(store, "lifted@example.com", "*", "consent", "asked to be mailed again", by="test")
    report = cleanup.build_snapshot(settings, "hubspot", "hard_bounce", since="2024-03-01", until="2024-03-31",
                                    categories=["unknown_user"], name="march")
    assert (report.name, report.count, report.without_contact) == ("march", 2, 1)
    with report.csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["email"], r["contact_id"], r["bounce_category"]) for r in rows] == [
        ("in1@example.com", ids["in1@example.com"], "unknown_user"),
        ("in2@example.com", ids["in2@example.com"], "unknown_user")]
    assert oct(report.csv_path.stat().st_mode & 0o777) == "0o600"
    assert not any(c["archived"] for c in fake.contacts.values())  # a snapshot deletes nothing


def test_wrong_count_is_refused_and_nothing_is_deleted(world):
    path, fake, store_path = world
    settings = load_settings(path)
    fake.add_contact("a@example.com")
    seed(store_path, [bounce("a@example.com", "2024-03-02")])
    cleanup.build_snapshot(settings, "hubspot", "hard_bounce", name="s1")
    with pytest.raises(RefusedError) as caught:
        cleanup.delete_snapshot(settings, "hubspot", confirm=2, reason="hard_bounce")
    assert "has 1 contacts, not 2" in str(caught.value)
    assert not fake.contacts["1001"]["archived"] and not fake.calls("/batch/archive")
    with Store(store_path) as store:
        assert store.conn.execute("SELECT count(*) FROM events WHERE kind LIKE 'contact_%'").fetchone()[0] == 0


def test_confirmed_delete_archives_exactly_the_snapshot_and_keeps_suppressions(world):
    path, fake, store_path = world
    settings = load_settings(path)
    first = fake.add_contact("spam1@example.com")
    second = fake.add_contact("spam2@example.com")
    fake.recipient_unsubscribes_all("spam1@example.com")
    seed(store_path, [OptOut(a, "*", "spam_complaint", "system", "2024-03-08T00:00:00+00:00")
                      for a in ("spam1@example.com", "spam2@example.com")])
    built = cleanup.build_snapshot(settings, "hubspot", "spam_complaint")
    # A new spam report after the snapshot is not part of it: the snapshot is static.
    late = fake.add_contact("spam3@example.com")
    seed(store_path, [OptOut("spam3@example.com", "*", "spam_complaint", "system")])
    report = cleanup.delete_snapshot(settings, "hubspot", confirm=2, reason="spam_complaint")
    assert (report.name, report.deleted, report.failed) == (built.name, 2, 0)
    assert fake.contacts[first]["archived"] and fake.contacts[second]["archived"]
    assert not fake.contacts[late]["archived"]
    assert fake.opted_out_of_all("spam1@example.com")  # the per-address preference stays at HubSpot
    with Store(store_path) as store:
        assert store.suppression("spam1@example.com")["reason"] == "spam_complaint"  # and in the store
        event = [e for e in store.events_for("spam2@example.com") if e["kind"] == "contact_deleted"][0]
        assert (event["target"], event["scope"]) == ("hubspot", "*")
        assert json.loads(event["details"]) == {"contact_id": second, "snapshot": built.name}
        assert snapshots.load(store, built.name)["state"] == snapshots.DELETED
    again = cleanup.delete_snapshot(settings, "hubspot", confirm=2, name=built.name)
    assert (again.deleted, again.done_before) == (0, 2) and len(fake.calls("/batch/archive")) == 1


def test_failed_deletions_are_recorded_and_retried_on_the_next_run(world):
    path, fake, store_path = world
    settings = load_settings(path)
    contact = fake.add_contact("a@example.com")
    seed(store_path, [bounce("a@example.com", "2024-03-02")])
    cleanup.build_snapshot(settings, "hubspot", "hard_bounce", name="s1")
    fake.fail(400, path="/batch/archive", message="Contact is locked by an import", category="VALIDATION_ERROR")
    report = cleanup.delete_snapshot(settings, "hubspot", confirm=1, name="s1")
    assert (report.deleted, report.failed) == (0, 1) and not fake.contacts[contact]["archived"]
    with Store(store_path) as store:
        failed = [e for e in store.events_for("a@example.com") if e["kind"] == "contact_delete_failed"]
        assert "locked by an import" in failed[0]["message"]
    report = cleanup.delete_snapshot(settings, "hubspot", confirm=1, name="s1")
    assert report.deleted == 1 and fake.contacts[contact]["archived"]


def test_adapters_without_contacts_are_a_usage_error(world):
    path, _, store_path = world
    with pytest.raises(InputError) as caught:
        cleanup.build_snapshot(load_settings(path), "list", "hard_bounce")
    assert "csv_file" in str(caught.value)
    with pytest.raises(InputError, match="has no contacts to look up or delete"):
        cleanup.delete_snapshot(load_settings(path), "list", confirm=0, reason="hard_bounce")
    with pytest.raises(InputError):
        cleanup.build_snapshot(load_settings(path), "hubspot", "unsubscribed")


def test_cli_builds_then_refuses_a_wrong_count_with_exit_3_then_deletes(world):
    path, fake, store_path = world
    contact = fake.add_contact("a@example.com")
    seed(store_path, [bounce("a@example.com", "2024-03-02")])
    runner = CliRunner()
    built = runner.invoke(main, ["--config", str(path), "cleanup", "hubspot", "--reason", "hard_bounce",
                                 "--snapshot", "cli"])
    assert built.exit_code == 0, built.output
    assert "snapshot cli: 1 contacts" in built.output and "--delete --confirm 1" in built.output
    refused = runner.invoke(main, ["--config", str(path), "cleanup", "hubspot", "--reason", "hard_bounce",
                                   "--delete", "--confirm", "7"])
    assert refused.exit_code == 3 and not fake.contacts[contact]["archived"]
    deleted = runner.invoke(main, ["--config", str(path), "cleanup", "hubspot", "--reason", "hard_bounce",
                                   "--delete", "--confirm", "1"])
    assert deleted.exit_code == 0, deleted.output
    assert "deleted 1 contacts" in deleted.output and fake.contacts[contact]["archived"]
    missing = runner.invoke(main, ["--config", str(path), "cleanup", "hubspot", "--reason", "hard_bounce",
                                   "--delete"])
    assert missing.exit_code == 2

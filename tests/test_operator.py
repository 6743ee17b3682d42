"""Operator workflows: count-confirmed import, export filters, history, and the audited lift."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from connector import operator
from connector.cli import main
from connector.commands import build_adapters, engine_for, sync_once
from connector.settings import load_settings
from state.errors import InputError, RefusedError
from state.models import OptOut, Page
from state.store import Store

from . import memory_adapter
from .conftest import write_settings


@pytest.fixture
def world(tmp_path):
    path = write_settings(tmp_path, [
        {"name": "crm", "type": "memory", "topics": {"news": "n"}},
        {"name": "esp", "type": "memory"},
    ], topics={"news": "Newsletter"})
    return tmp_path, path, load_settings(path, environ={})


def cli(path, *args):
    return CliRunner().invoke(main, ["--config", str(path), *args], catch_exceptions=False)


def write_list(folder, rows, name="list.csv", header="name,email"):
    path = folder / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def store_of(settings) -> Store:
    return Store(settings.store.path)


def test_import_previews_then_applies_only_with_the_exact_count(world):
    tmp_path, path, settings = world
    with store_of(settings) as store:
        store.ingest_page("crm", Page([OptOut("known@x.io", origin="recipient")]))
        store.promote("crm")
    listing = write_list(tmp_path, ["A,a@x.io", "B,B@X.io", "b,b@x.io ", "K,known@x.io", "Z,zed", "Y,"])

    result = cli(path, "import", str(listing))
    assert result.exit_code == 0
    assert "new opt-outs" in result.output and "--confirm 2" in result.output
    assert "row 6: invalid address '***'" in result.output     # masked, like every address shown
    with store_of(settings) as store:
        assert store.count_suppressions() == 1            # the preview changed nothing

    refused = cli(path, "import", str(listing), "--confirm", "3")
    assert refused.exit_code == 3 and "not 3; nothing was changed" in refused.output
    with store_of(settings) as store:
        assert store.count_suppressions() == 1

    applied = cli(path, "import", str(listing), "--confirm", "2", "--legal-basis", "consent",
                  "--explanation", "trade fair list")
    assert applied.exit_code == 0 and "Imported 2 new opt-outs" in applied.output
    with store_of(settings) as store:
        row = store.suppression("b@x.io")
        assert (row["reason"], row["origin"], row["source"]) == ("imported", "user", "import")
        event = store.events_for("a@x.io")[0]
        assert (event["legal_basis"], event["explanation"]) == ("consent", "trade fair list")
        assert store.suppression("known@x.io")["origin"] == "recipient"   # untouched


def test_import_counts_and_rejected_out(world):
    tmp_path, path, settings = world
    rows = [f"n,user{i}@x.io" for i in range(30)] + ["n,user1@x.io"] + [f"n,bad{i}" for i in range(25)]
    listing = write_list(tmp_path, rows)
    rejected = tmp_path / "rejected.csv"
    source, preview = operator.import_file(settings, listing, scope="news", rejected_out=rejected)
    assert (preview.rows_read, preview.unique, preview.duplicates, preview.new, preview.rejected_count) == (
        56, 30, 1, 30, 25)
    assert len(preview.rejected_sample) == 20
    written = list(csv.reader(rejected.open()))
    assert written[0] == ["row", "value", "reason"] and len(written) == 26
    assert written[1][:2] == ["33", "bad0"]
    source, preview = operator.import_file(settings, listing, scope="news", confirm=30)
    with store_of(settings) as store:
        assert store.suppression("user0@x.io", "news")["reason"] == "imported"
        assert store.suppression("user0@x.io") is None


def test_import_is_one_transaction(world, monkeypatch):
    """An error 20,000 rows into a confirmed import leaves the store as it was."""
    tmp_path, path, settings = world
    listing = write_list(tmp_path, [f"n,user{i}@x.io" for i in range(25_000)])
    from connector import csv_import

    blocks = csv_import.ImportFile.blocks

    def exploding(self):
        read = 0
        for item in blocks(self):
            read += 1 if isinstance(item, csv_import.ImportRow) else len(item.raws)
            if read >= 20_000:
                raise OSError("disk went away mid-import")
            yield item

    monkeypatch.setattr(csv_import.ImportFile, "blocks", exploding)
    with pytest.raises(OSError):
        operator.import_file(settings, listing, confirm=25_000)
    with store_of(settings) as store:
        assert store.count_suppressions() == 0
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_import_rejects_an_unknown_scope(world):
    tmp_path, path, settings = world
    listing = write_list(tmp_path, ["a,a@x.io"])
    with pytest.raises(InputError, match="scope 'sports' is not"):
        operator.import_file(settings, listing, scope="sports")


def test_imported_opt_outs_spread_to_sinks_and_never_create_contacts(world):
    tmp_path, path, settings = world
    listing = write_list(tmp_path, ["a,a@x.io"])
    operator.import_file(settings, listing, confirm=1)
    sync_once(settings)
    vendors = memory_adapter.VENDORS
    assert set(vendors["crm"].held) == {("a@x.io", "*")} and set(vendors["esp"].held) == {("a@x.io", "*")}


def seed(settings, rows):
    """Store opt-outs as if adapters had reported them: (adapter, OptOut)."""
    with store_of(settings) as store:
        for adapter, optout in rows:
            store.ingest_page(adapter, Page([optout]))
            store.promote(adapter)


def test_export_streams_csv_with_filters(world):
    tmp_path, path, settings = world
    seed(settings, [
        ("crm", OptOut("old@x.io", "*", "hard_bounce", "system", "2026-01-01T10:00:00+00:00", {"category": "unknown_user"})),
        ("crm", OptOut("new@x.io", "*", "hard_bounce", "system", "2026-06-01T10:00:00+00:00")),
        ("esp", OptOut("spam@x.io", "*", "spam_complaint", "system", "2026-06-02T10:00:00+00:00")),
        ("esp", OptOut("news@x.io", "news", "unsubscribed", "recipient", "2026-06-03T00:00:00+00:00")),
    ])

    def rows(*args, **kwargs):
        out = io.StringIO()
        operator.export(settings, out, *args, **kwargs)
        return list(csv.reader(io.StringIO(out.getvalue())))

    everything = rows()
    assert everything[0] == ["email", "scope", "reason", "origin", "source", "occurred_at", "released_at"]
    assert [r[0] for r in everything[1:]] == ["new@x.io", "news@x.io", "old@x.io", "spam@x.io"]
    assert [r[0] for r in rows(reasons=["hard_bounce"], since="2026-03-01")[1:]] == ["new@x.io"]
    assert [r[0] for r in rows(reasons=["hard_bounce", "spam_complaint"])[1:]] == ["new@x.io", "old@x.io", "spam@x.io"]
    assert [r[0] for r in rows(until="2026-06-01")[1:]] == ["new@x.io", "old@x.io"]   # the whole day counts
    assert [r[0] for r in rows(until="2026-06-01T10:00:00Z")[1:]] == ["old@x.io"]
    assert [r[0] for r in rows(scope="news")[1:]] == ["news@x.io"]
    assert [r[0] for r in rows(source="esp")[1:]] == ["news@x.io", "spam@x.io"]
    with pytest.raises(InputError, match="not an ISO date"):
        rows(since="last week")
    result = cli(path, "export", "--reason", "spam_complaint", "-o", str(tmp_path / "spam.csv"))
    assert result.exit_code == 0
    assert (tmp_path / "spam.csv").read_text().splitlines()[1].startswith("spam@x.io,*,spam_complaint,system,esp,")


def test_history_is_oldest_first_and_normalises_the_address(world):
    tmp_path, path, settings = world
    seed(settings, [("crm", OptOut("ann@x.io", "*", "imported", "user"))])
    sync_once(settings)
    seed(settings, [("esp", OptOut("ann@x.io", "*", "unsubscribed", "recipient", "2099-01-01T00:00:00+00:00"))])

    normalised, lines = operator.history(settings, "  ANN@X.io ")
    assert normalised == "ann@x.io"
    assert [line.data["kind"] for line in lines] == ["suppressed", "applied", "changed"]
    assert [line.seq for line in lines] == sorted(line.seq for line in lines)
    assert "applied to esp" in lines[1].what and "reason changed to unsubscribed by recipient" in lines[2].what

    result = cli(path, "history", "Ann@x.io", "--json")
    assert [e["kind"] for e in json.loads(result.output)["events"]] == ["suppressed", "applied", "changed"]
    unknown = cli(path, "history", "nobody@x.io")
    assert unknown.exit_code == 0 and "no opt-out or event recorded" in unknown.output


@pytest.mark.parametrize("reason, origin, refusal", [
    ("unsubscribed", "recipient", "only the recipient can undo it"),
    ("spam_complaint", "system", "spam complaints are never lifted"),
    ("hard_bounce", "system", "hard bounce reported by a system"),
    ("spam_complaint", "user", "spam complaints are never lifted"),
])
def test_lift_is_refused_for_recipient_and_system_opt_outs(world, reason, origin, refusal):
    tmp_path, path, settings = world
    seed(settings, [("crm", OptOut("x@x.io", "*", reason, origin))])
    result = cli(path, "lift", "x@x.io", "--scope", "*", "--legal-basis", "consent", "--explanation", "asked")
    assert result.exit_code == 3 and refusal in result.output
    with store_of(settings) as store:
        assert store.suppression("x@x.io") is not None
        assert [e["kind"] for e in store.events_for("x@x.io")] == ["suppressed"]


def test_lift_needs_a_legal_basis_and_an_explanation(world):
    tmp_path, path, settings = world
    seed(settings, [("crm", OptOut("x@x.io", "*", "manual", "user"))])
    assert cli(path, "lift", "x@x.io", "--scope", "*", "--explanation", "e").exit_code == 2
    assert cli(path, "lift", "x@x.io", "--scope", "*", "--legal-basis", "whim", "--explanation", "e").exit_code == 2
    with pytest.raises(InputError, match="explanation is required"):
        operator.lift(settings, "x@x.io", scope="*", legal_basis="consent", explanation="  ")
    with store_of(settings) as store:
        assert store.suppression("x@x.io") is not None


def test_a_lifted_opt_out_does_not_come_back_from_stale_observations_but_does_from_newer_ones(world):
    tmp_path, path, settings = world
    crm = build_adapters(settings, ["crm"])["crm"]
    crm.opt_out(OptOut("x@x.io", "*", "manual", "user", "2026-01-01T00:00:00+00:00"))
    sync_once(settings)
    assert ("x@x.io", "*") in memory_adapter.VENDORS["esp"].held

    outcome = operator.lift(settings, "x@x.io", scope="*", legal_basis="consent", explanation="re-consented")
    assert outcome.source == "crm" and outcome.applied_at == ["esp"]
    with store_of(settings) as store:
        assert store.suppression("x@x.io") is None

    # crm still holds it: a reconcile sees it again, dated before the lift, and ignores it.
    with engine_for(settings) as engine:
        report = engine.reconcile("crm")
        assert report.error is None
    sync_once(settings)
    with store_of(settings) as store:
        assert store.suppression("x@x.io") is None

    # An undated observation is stale too; a new opt-out dated after the lift brings it back.
    crm.opt_out(OptOut("x@x.io", "*", "manual", "user", None))
    crm.log.append(OptOut("x@x.io", "*", "unsubscribed", "recipient", None))
    sync_once(settings)
    with store_of(settings) as store:
        assert store.suppression("x@x.io") is None
    crm.log.append(OptOut("x@x.io", "*", "unsubscribed", "recipient", "2099-01-01T00:00:00+00:00"))
    sync_once(settings)
    with store_of(settings) as store:
        row = store.suppression("x@x.io")
        assert (row["reason"], row["origin"]) == ("unsubscribed", "recipient")
        kinds = [e["kind"] for e in store.events_for("x@x.io")]
        assert kinds[:3] == ["suppressed", "applied", "lifted"] and kinds[3] == "suppressed"


def test_lift_with_propagate_removes_only_where_this_daemon_put_it(world):
    tmp_path, path, settings = world
    adapters = build_adapters(settings)
    adapters["crm"].opt_out(OptOut("x@x.io", "*", "manual", "user"))
    adapters["esp"].held[("x@x.io", "*")] = OptOut("x@x.io")     # esp had it already, on its own
    adapters["crm"].opt_out(OptOut("y@x.io", "*", "manual", "user"))
    sync_once(settings)

    outcome = operator.lift(settings, "x@x.io", scope="*", legal_basis="consent", explanation="e", propagate=True)
    assert outcome.propagated == {}
    assert ("x@x.io", "*") in memory_adapter.VENDORS["esp"].held     # not ours to remove

    outcome = operator.lift(settings, "y@x.io", scope="*", legal_basis="contract", explanation="e", propagate=True)
    assert outcome.propagated == {"esp": "removed"}
    assert ("y@x.io", "*") not in memory_adapter.VENDORS["esp"].held
    assert ("y@x.io", "*") in memory_adapter.VENDORS["crm"].held      # the source is never touched
    with store_of(settings) as store:
        assert [e["kind"] for e in store.events_for("y@x.io")][-2:] == ["lifted", "removed"]


def test_lift_without_propagate_lists_where_it_still_is(world):
    tmp_path, path, settings = world
    adapters = build_adapters(settings)
    adapters["crm"].opt_out(OptOut("y@x.io", "*", "manual", "user"))
    sync_once(settings)
    result = cli(path, "lift", "Y@x.io", "--scope", "*", "--legal-basis", "consent", "--explanation", "e")
    assert result.exit_code == 0
    assert "it came from crm" in result.output and "still held where this daemon applied it: esp" in result.output
    assert ("y@x.io", "*") in memory_adapter.VENDORS["esp"].held
    nothing = cli(path, "lift", "y@x.io", "--scope", "*", "--legal-basis", "consent", "--explanation", "e")
    assert nothing.exit_code == 2 and "nothing to lift" in nothing.output

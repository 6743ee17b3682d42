"""A recipient's own re-subscribe (state/resubscribes.py through the engine): released where it was made,
lifted everywhere with policy `everywhere`, and nothing else ever releases an opt-out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from state import resubscribes
from state.models import OptOut, Page, Resubscribe

T0 = "2026-03-01T10:00:00+00:00"   # the opt-out
T1 = "2026-03-02T10:00:00+00:00"   # after it
T_BEFORE = "2026-02-01T10:00:00+00:00"

ADAPTERS = [{"name": "crm"}, {"name": "esp"}, {"name": "list", "role": "write"}]


def kinds(store, address="ann@example.com"):
    return [e["kind"] for e in store.events_for(address)]


def event(store, kind, address="ann@example.com"):
    return next(e for e in store.events_for(address) if e["kind"] == kind)


def sent_to(vendor, address="ann@example.com"):
    return [o.scope for call in vendor.apply_calls for o in call if o.address == address]


@pytest.fixture
def spread(memory_world):
    """ann opted out at crm (the recipient, dated T0), applied to esp and list."""
    def build(reason="unsubscribed", origin="recipient", **sync):
        settings, store, engine, v = memory_world(ADAPTERS, **sync)
        v["crm"].opt_out(OptOut("ann@example.com", "*", reason, origin, T0))
        engine.sync_once()
        assert sent_to(v["esp"]) == ["*"] and ("ann@example.com", "*") in v["esp"].held
        return settings, store, engine, v
    return build


def test_a_recipients_dated_resubscribe_releases_the_opt_out_only_where_it_was_made(spread):
    settings, store, engine, v = spread()
    v["esp"].resubscribe("ann@example.com", occurred_at=T1, record_id="act-7")
    reports = engine.sync_once()
    assert [r.error for r in reports] == [None, None, None]
    assert next(r for r in reports if r.adapter == "esp").released == 1

    resub = event(store, "resubscribed")
    assert resub["source"] == "esp" and resub["origin"] == "recipient"
    assert resub["occurred_at"] == "2026-03-02T10:00:00.000000+00:00"
    assert json.loads(resub["details"]) == {"vendor": "memory", "record_id": "act-7", "resubscribe_by": "recipient"}
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["esp"]
    # The store and every other system keep the opt-out.
    assert store.suppression("ann@example.com")["reason"] == "unsubscribed"
    assert ("ann@example.com", "*") in v["crm"].held and ("ann@example.com", "*") in v["list"].held

    # Reconcile and push no longer re-apply it at esp; they still do elsewhere.
    v["list"].held.clear()
    for name in ("esp", "list"):
        assert engine.reconcile(name).error is None
    assert sent_to(v["esp"]) == ["*"]  # only the first apply, before the re-subscribe
    assert ("ann@example.com", "*") not in v["esp"].held
    assert ("ann@example.com", "*") in v["list"].held
    assert v["crm"].removed == v["esp"].removed == v["list"].removed == []


@pytest.mark.parametrize("by", ["admin", "api", "import", "unknown"])
def test_a_resubscribe_not_made_by_the_recipient_releases_nothing(spread, by):
    settings, store, engine, v = spread()
    v["esp"].resubscribe("ann@example.com", by=by, occurred_at=T1)
    engine.sync_once()
    observed = event(store, "observed")
    assert f"made by {by}, not by the recipient" in observed["message"]
    assert "resubscribed" not in kinds(store) and resubscribes.releases_of(store, "ann@example.com", "*") == []
    assert engine.reconcile("esp").error is None
    assert sent_to(v["esp"]) == ["*", "*"] and ("ann@example.com", "*") in v["esp"].held  # drift, re-applied


@pytest.mark.parametrize("when", [None, T_BEFORE, T0])
def test_an_undated_or_older_resubscribe_releases_nothing(spread, when):
    settings, store, engine, v = spread()
    v["esp"].resubscribe("ann@example.com", occurred_at=when)
    engine.sync_once()
    if when is None:
        assert "the vendor does not date it" in event(store, "observed")["message"]
    else:  # older than the opt-out: it is no news, and not even recorded
        assert kinds(store) == ["suppressed", "applied", "applied"]
    assert resubscribes.releases_of(store, "ann@example.com", "*") == []
    engine.reconcile("esp")
    assert ("ann@example.com", "*") in v["esp"].held


@pytest.mark.parametrize("reason, why", [("spam_complaint", "a spam complaint is never released"),
                                         ("hard_bounce", "a hard bounce is never released")])
def test_a_spam_complaint_or_hard_bounce_is_never_released(spread, reason, why):
    settings, store, engine, v = spread(reason, "system", recipient_resubscribe="everywhere")
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    assert why in event(store, "observed")["message"]
    assert store.suppression("ann@example.com")["reason"] == reason
    assert "lifted" not in kinds(store)


def test_policy_everywhere_lifts_with_consent_and_removes_where_this_daemon_put_it(spread):
    settings, store, engine, v = spread(recipient_resubscribe="everywhere")
    v["esp"].resubscribe("ann@example.com", occurred_at=T1, record_id="act-7")
    engine.sync_once()

    assert store.suppression("ann@example.com") is None
    lifted = event(store, "lifted")
    assert lifted["legal_basis"] == "consent" and lifted["origin"] == "recipient"
    assert lifted["explanation"] == ("re-subscribed at esp by the recipient at 2026-03-02T10:00:00.000000+00:00 "
                                     "(record_id=act-7, vendor=memory)")
    assert json.loads(lifted["details"])["propagate_to"] == ["list"]  # esp: gone already; crm: its source
    # The list sink, where this daemon applied it, had it removed at its push; crm and esp got nothing.
    assert [(o.address, o.scope) for o in v["list"].removed] == [("ann@example.com", "*")]
    assert v["crm"].removed == v["esp"].removed == []
    removed = event(store, "removed")
    assert removed["target"] == "list" and removed["ref_seq"] == lifted["seq"]
    assert store.conn.execute("SELECT count(*) FROM removals_due").fetchone()[0] == 0
    # The old opt-out read again (dated before the re-subscribe) does not come back.
    engine.reconcile("crm")
    assert store.suppression("ann@example.com") is None


def test_policy_ignore_and_the_per_adapter_setting(spread):
    settings, store, engine, v = spread(recipient_resubscribe="ignore")
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    assert "recipient_resubscribe is 'ignore'" in event(store, "observed")["message"]
    assert resubscribes.releases_of(store, "ann@example.com", "*") == []


def test_an_adapters_own_policy_overrides_the_global_one(memory_world):
    settings, store, engine, v = memory_world(
        [{"name": "crm"}, {"name": "esp", "recipient_resubscribe": "local"}, {"name": "list", "role": "write"}],
        recipient_resubscribe="everywhere")
    assert settings.resubscribe_policy(settings.adapter("esp")) == "local"
    assert settings.resubscribe_policy(settings.adapter("crm")) == "everywhere"
    v["crm"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", T0))
    engine.sync_once()
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["esp"]
    assert store.suppression("ann@example.com") is not None and "lifted" not in kinds(store)


def test_a_newer_opt_out_ends_the_release_and_it_is_re_applied_there(spread):
    settings, store, engine, v = spread()
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    v["crm"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", "2026-03-05T10:00:00+00:00"))
    engine.sync_once()
    ended = event(store, "release_ended")
    assert ended["target"] == "esp" and ended["source"] == "crm"
    assert resubscribes.releases_of(store, "ann@example.com", "*") == []
    assert store.checkpoint("esp").reconcile_requested
    engine.reconcile("esp")
    assert ("ann@example.com", "*") in v["esp"].held


def test_a_resubscribe_read_again_is_recorded_once(spread):
    settings, store, engine, v = spread()
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    v["esp"].resubscribe("ann@example.com", by="admin", occurred_at=None)
    engine.sync_once()
    store.set_checkpoint("esp", read_cursor=None)  # read everything again
    engine.sync_once()
    assert kinds(store).count("resubscribed") == 1 and kinds(store).count("observed") == 1


def test_a_subscribe_of_an_address_that_never_opted_out_is_not_recorded(memory_world):
    settings, store, engine, v = memory_world(ADAPTERS)
    v["esp"].resubscribe("new@example.com", occurred_at=T1)
    engine.sync_once()
    assert store.events_for("new@example.com") == []


def test_a_resubscribe_in_the_same_read_after_a_new_opt_out_releases_it_there(memory_world):
    settings, store, engine, v = memory_world(ADAPTERS)
    v["esp"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", T0))
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["esp"]
    assert store.suppression("ann@example.com") is not None  # crm and list keep it
    assert ("ann@example.com", "*") in v["crm"].held
    engine.reconcile("esp")
    assert ("ann@example.com", "*") not in v["esp"].held


def test_a_version_4_store_migrates_and_releases(tmp_path, memory_world):
    shutil.copyfile(Path(__file__).parent / "data" / "stores" / "store_v4.db", tmp_path / "store.db")
    settings, store, engine, v = memory_world([{"name": "hubspot"}, {"name": "sendgrid"}, {"name": "csv"}])
    # ann: the recipient's opt-out from hubspot, applied to sendgrid (in the fixture), dated 2024-02-28.
    v["sendgrid"].resubscribe("ann@example.com", occurred_at="2024-03-05T09:00:00+00:00")
    engine.pull("sendgrid", __import__("connector.engine", fromlist=["CycleReport"]).CycleReport("sendgrid"))
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["sendgrid"]
    assert resubscribes.release_counts(store) == {"sendgrid": 1}


def test_a_release_read_before_the_first_push_keeps_push_from_sending_it_there(memory_world):
    settings, store, engine, v = memory_world(ADAPTERS)
    # crm is pulled first: its opt-out is stored when esp's later re-subscribe is read, before any push.
    v["crm"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", T0))
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    assert resubscribes.releases_of(store, "ann@example.com", "*") == ["esp"]
    assert sent_to(v["esp"]) == [] and ("ann@example.com", "*") in v["list"].held
    assert store.pending_summary("esp", 0)[0] == 0


def test_an_opt_out_in_the_same_read_dated_after_the_resubscribe_keeps_it(memory_world):
    settings, store, engine, v = memory_world(ADAPTERS)
    v["crm"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", T0))
    engine.sync_once(["crm"])
    # One read of esp: the recipient's own opt-out there, a re-subscribe, and an opt-out again.
    v["esp"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", T0))
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    v["esp"].opt_out(OptOut("ann@example.com", "*", "unsubscribed", "recipient", "2026-03-03T10:00:00+00:00"))
    engine.sync_once()
    assert "resubscribed" not in kinds(store)
    assert resubscribes.releases_of(store, "ann@example.com", "*") == []


def test_a_bad_policy_is_a_settings_error_naming_the_key(tmp_path):
    from connector.settings import load_settings
    from state.errors import ConfigError

    from .conftest import write_settings

    path = write_settings(tmp_path, [{"name": "esp", "type": "csv_file", "path": "o.csv",
                                      "recipient_resubscribe": "sometimes"}], sync={"recipient_resubscribe": "often"})
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    text = str(caught.value)
    assert "sync.recipient_resubscribe" in text and "(esp).recipient_resubscribe" in text
    assert "Input should be 'local', 'everywhere' or 'ignore', got 'often'" in text


def test_a_persons_lift_ends_the_releases_of_the_opt_out_it_removes(spread):
    from state.lifts import lift

    settings, store, engine, v = spread("manual", "user")
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()
    assert resubscribes.release_counts(store) == {"esp": 1}
    lift(store, "ann@example.com", "*", "consent", "asked by phone", "ops")
    assert resubscribes.release_counts(store) == {}


def test_a_lift_stores_its_evidence_and_details_exactly(spread):
    """The lift's events are the legal record: their details are stored as exact, canonical JSON."""
    settings, store, engine, v = spread(recipient_resubscribe="everywhere")
    v["esp"].resubscribe("ann@example.com", occurred_at=T1, record_id="act-7")
    engine.sync_once()
    resub, lifted = event(store, "resubscribed"), event(store, "lifted")
    assert resub["details"] == '{"record_id":"act-7","resubscribe_by":"recipient","vendor":"memory"}'
    assert lifted["details"] == (
        '{"by":"recipient re-subscribe at esp","resubscribe_seq":%d,"propagate_to":["list"]}' % resub["seq"])
    assert (lifted["source"], lifted["reason"], lifted["origin"]) == ("crm", "unsubscribed", "recipient")


def test_a_lift_of_an_opt_out_still_staged_is_removed_nowhere_though_an_earlier_one_was_applied(spread):
    settings, store, engine, v = spread(recipient_resubscribe="everywhere")
    v["esp"].resubscribe("ann@example.com", occurred_at=T1)
    engine.sync_once()   # the first lift: removed at list, where this daemon had applied it
    assert store.suppression("ann@example.com") is None and len(v["list"].removed) == 1
    # A newer opt-out at crm, staged but not promoted yet; then the recipient re-subscribes again.
    store.ingest_page("crm", Page([OptOut("ann@example.com", "*", "unsubscribed", "recipient",
                                          "2026-03-03T10:00:00+00:00")]))
    assert store.staged_count("crm") == 1
    counts = store.ingest_page("esp", Page(resubscribes=[
        Resubscribe("ann@example.com", "*", "recipient", "2026-03-04T10:00:00+00:00", {"id": "r2"})]),
        resubscribe_policy="everywhere")
    assert counts.released == 1
    second = [e for e in store.events_for("ann@example.com") if e["kind"] == "lifted"][-1]
    # Nothing applied this opt-out anywhere: the first opt-out's applies are not this one's to undo.
    assert json.loads(second["details"])["propagate_to"] == []
    assert store.conn.execute("SELECT count(*) FROM removals_due").fetchone()[0] == 0
    assert store.staged_count("crm") == 0 and store.suppression("ann@example.com") is None

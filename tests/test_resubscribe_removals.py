"""The removals a recipient's re-subscribe (policy everywhere) makes at the sinks this daemon wrote to
(Engine._remove_lifted_by_recipients): in batches, each outcome recorded with its message, a transient
outcome left due, and a sink that cannot remove told so. Written for mutants a mutation run left alive."""

from __future__ import annotations

from dataclasses import replace

from state.models import ALREADY, APPLIED, PERMANENT, TRANSIENT, ApplyResult, OptOut

T0 = "2026-03-01T10:00:00+00:00"
T1 = "2026-03-02T10:00:00+00:00"
ANN, BOB, CAT = "ann@example.com", "bob@example.com", "cat@example.com"


def lifted_everywhere(memory_world, addresses, list_batch_size=10):
    """Opt-outs from crm applied to the 'list' sink, then re-subscribed by the recipients at esp.

    Returns the world before the cycle that lifts them (and removes them at 'list'), and the lift seqs
    are found afterwards by `lift_seq`.
    """
    settings, store, engine, v = memory_world(
        [{"name": "crm"}, {"name": "esp"}, {"name": "list", "role": "write", "batch_size": list_batch_size}],
        recipient_resubscribe="everywhere")
    for address in addresses:
        v["crm"].opt_out(OptOut(address, "*", "unsubscribed", "recipient", T0))
    engine.sync_once()
    assert all((address, "*") in v["list"].held for address in addresses)
    for address in addresses:
        v["esp"].resubscribe(address, occurred_at=T1)
    return settings, store, engine, v


def lift_seq(store, address):
    return next(e["seq"] for e in store.events_for(address) if e["kind"] == "lifted")


def removal_events(store, address):
    return [(e["kind"], e["target"], e["scope"], e["ref_seq"], e["message"])
            for e in store.events_for(address) if e["kind"] in ("removed", "remove_failed")]


def due(store):
    return store.conn.execute("SELECT adapter, lift_seq FROM removals_due ORDER BY lift_seq").fetchall()


def list_report(reports):
    return next(r for r in reports if r.adapter == "list")


def recording_removes(vendor, answer=None):
    """Record each remove call's batch at `vendor`; `answer(optout)` may give the result instead."""
    calls: list[list[str]] = []
    remove = vendor.remove

    def recorded(batch):
        calls.append([o.address for o in batch])
        if answer is None:
            return remove(batch)
        return [answer(o) for o in batch]

    vendor.remove = recorded
    return calls


def test_removals_go_in_batches_of_the_sinks_size_each_recorded_once_and_counted(memory_world):
    settings, store, engine, v = lifted_everywhere(memory_world, [ANN, BOB, CAT], list_batch_size=2)
    calls = recording_removes(v["list"])
    v["list"].held.pop((BOB, "*"))  # removed there by hand already: the sink answers "already"
    report = list_report(engine.sync_once())
    assert report.error is None and report.notes == []
    assert calls == [[ANN, BOB], [CAT]]
    assert removal_events(store, ANN) == [("removed", "list", "*", lift_seq(store, ANN), "removed")]
    assert removal_events(store, BOB) == [("removed", "list", "*", lift_seq(store, BOB), "was not there")]
    assert removal_events(store, CAT) == [("removed", "list", "*", lift_seq(store, CAT), "removed")]
    assert report.removed == 3
    assert due(store) == [] and v["list"].held == {}


def test_a_sinks_own_message_is_kept_and_a_refusal_is_recorded_as_failed(memory_world):
    settings, store, engine, v = lifted_everywhere(memory_world, [ANN, BOB])
    answers = {ANN: ApplyResult(OptOut(ANN), PERMANENT, "vendor refuses this address"),
               BOB: ApplyResult(OptOut(BOB), APPLIED, "deleted from the suppression list")}
    recording_removes(v["list"], lambda o: answers[o.address])
    report = list_report(engine.sync_once())
    assert removal_events(store, ANN) == [
        ("remove_failed", "list", "*", lift_seq(store, ANN), "failed: vendor refuses this address")]
    assert removal_events(store, BOB) == [
        ("removed", "list", "*", lift_seq(store, BOB), "deleted from the suppression list")]
    assert report.removed == 1 and due(store) == []


def test_a_transient_outcome_stays_due_and_the_rest_of_the_batch_is_recorded(memory_world):
    settings, store, engine, v = lifted_everywhere(memory_world, [ANN, BOB])
    calls = recording_removes(v["list"], lambda o: ApplyResult(o, TRANSIENT if o.address == ANN else ALREADY,
                                                               "429 try later" if o.address == ANN else ""))
    report = list_report(engine.sync_once())
    assert calls == [[ANN, BOB]]
    assert removal_events(store, ANN) == []
    assert removal_events(store, BOB) == [("removed", "list", "*", lift_seq(store, BOB), "was not there")]
    assert due(store) == [("list", lift_seq(store, ANN))] and report.removed == 1


def test_a_transient_error_leaves_every_removal_due_with_a_note(memory_world):
    settings, store, engine, v = lifted_everywhere(memory_world, [ANN])
    from state.errors import TransientError

    def unavailable(batch):
        raise TransientError("503 service unavailable")

    v["list"].remove = unavailable
    report = list_report(engine.sync_once())
    assert report.error is None and report.removed == 0
    assert report.notes == ["removals after a recipient's re-subscribe wait for the next cycle: "
                            "503 service unavailable"]
    assert due(store) == [("list", lift_seq(store, ANN))] and removal_events(store, ANN) == []


def test_a_sink_that_cannot_remove_gets_a_failed_removal_to_do_by_hand(memory_world):
    settings, store, engine, v = lifted_everywhere(memory_world, [ANN, BOB])
    v["list"].capabilities = replace(v["list"].capabilities, remove=False)
    calls = recording_removes(v["list"])
    report = list_report(engine.sync_once())
    assert calls == [] and report.removed == 0 and report.error is None
    message = "this adapter cannot remove suppressions; remove it there by hand"
    for address in (ANN, BOB):
        assert removal_events(store, address) == [
            ("remove_failed", "list", "*", lift_seq(store, address), message)]
    assert due(store) == [] and (ANN, "*") in v["list"].held

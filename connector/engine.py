"""The sync engine: one pull, push or reconcile of one adapter against the store.

Pull ingests pages with their cursor in one transaction each; push applies
suppression events after the adapter's watermark in batches and records the
outcomes with the new watermark in one transaction; reconcile diffs a full
read with the store in SQL. Opt-outs only ever spread. An adapter's memory
(what it learnt about its vendor, e.g. HubSpot's batch scopes) is loaded from
the store before each of these and saved after it, so adapters never touch it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TYPE_CHECKING

from pydantic import SecretStr

from adapters.base import Adapter, AdapterMemory, AdapterSettings
from state.errors import ConfigError, PermanentError, RefusedError, TransientError
from state import resubscribes
from state.models import GLOBAL_SCOPE, TRANSIENT, ApplyResult, OptOut, Page, Rejected, utc_now
from state.merge_diff import SinkMerge
from state.store import IngestCounts, PendingEvent, PushOutcome, Store

from .collector import fewer_collections
from .prefetch import prefetched
from .progress import STORE_KEY as PROGRESS_KEY, WorkProgress
if TYPE_CHECKING:  # pydantic-settings loads only where settings are loaded
    from .settings import Settings

SCAN_WINDOW = 2000


@contextmanager
def memory_kept(adapter: Adapter, store: Store, name: str, *, save: bool = True) -> Iterator[None]:
    """Load an adapter's `memory` (AdapterMemory) from the store, and save what changed afterwards.

    Nothing for adapters without one. A dry run loads but does not save.
    """
    memory = getattr(adapter, "memory", None)
    if not isinstance(memory, AdapterMemory):
        yield
        return
    # The progress row of running work shares the table; it is the engine's, not the adapter's.
    memory.load({key: value for key, value in store.adapter_memory(name).items() if key != PROGRESS_KEY})
    try:
        yield
    finally:
        changes = memory.unsaved()
        if save and changes:
            store.save_adapter_memory(name, changes)
            memory.mark_saved()


def retry_budget_held(adapter: Adapter) -> AbstractContextManager:
    """Hold an HTTP adapter's retry budget for one whole cycle; nothing for other adapters.

    HTTP adapters start a budget at each read and each apply batch; held, those
    starts share one budget, so a cycle never waits longer than `retry_budget`.
    """
    cycle = getattr(getattr(adapter, "http", None), "cycle", None)
    return cycle() if callable(cycle) else nullcontext()


# A dry run lists this many new, rejected and to-be-pushed items per adapter (the rest are counted).
DRY_RUN_LIST_LIMIT = 20


@dataclass
class CycleReport:
    """What one cycle (or reconcile) of one adapter did."""

    adapter: str
    phase: str = "cycle"
    dry_run: bool = False
    pulled: int = 0
    rejected: int = 0
    staged: int = 0
    added: int = 0
    changed: int = 0
    pushed: int = 0
    failed: int = 0
    parked: int = 0
    skipped: int = 0
    paused: bool = False
    waiting_approval: int = 0
    missing_at_source: int = 0
    error: BaseException | None = None
    duration_ms: int = 0
    notes: list[str] = field(default_factory=list)
    # Of `pulled`: already suppressed for that scope, and left out (lifted before, or our own echo).
    held: int = 0
    ignored: int = 0
    # Opt-outs a recipient's own re-subscribe released here (or lifted); removals those lifts made here.
    released: int = 0
    removed: int = 0
    # Dry runs only, for the operator to see: the new opt-outs, the rejected items, what push would send.
    would_add: list[OptOut] = field(default_factory=list)
    would_reject: list[Rejected] = field(default_factory=list)
    would_push: list[OptOut] = field(default_factory=list)
    # How many of each the lists keep (None: all, for --json). The counts above are always whole.
    list_limit: int | None = DRY_RUN_LIST_LIMIT

    def keep(self, items: list, more) -> None:
        """Extend a dry-run list with `more`, up to `list_limit`, so memory stays bounded."""
        room = None if self.list_limit is None else max(0, self.list_limit - len(items))
        items.extend(more if room is None else islice(more, room))

    @property
    def duplicates(self) -> int:
        """Of `pulled`: repeats of an (address, scope) read earlier in the same read (or staged before)."""
        return self.pulled - self.staged - self.held - self.ignored

    def absorb(self, counts: IngestCounts) -> None:
        self.pulled += counts.read
        self.rejected += counts.rejected
        self.staged += counts.staged
        self.changed += counts.changed
        self.held += counts.held
        self.ignored += counts.ignored_lifted + counts.ignored_echoes
        self.released += counts.released


class _Sender:
    """One push's sink calls, on a thread of their own, so that the store's work overlaps them.

    Only one call is at the sink at a time (a vendor's connection limit counts this daemon once).
    While a batch is there, the store records the batch before it and the engine reads and builds
    the next; the next is sent only once this one's results are in, so a batch with parked items
    or an error still stops the push before anything more is sent. A batch's in-flight marks are
    committed before its call (Store.mark_inflight), so whatever a crash or an error leaves
    unrecorded is re-sent next cycle and counted as this daemon's apply.
    """

    def __init__(self, name: str):
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self.call: Future | None = None
        self.context: tuple | None = None     # what the engine needs to settle the call
        self.unrecorded: tuple | None = None  # (outcomes, watermark, resent) of a settled batch

    def __enter__(self) -> "_Sender":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.call is not None:
            wait((self.call,))  # never left running; unsettled, its marks stay (re-sent next cycle)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def send(self, adapter: Adapter, batch: list[OptOut], context: tuple) -> None:
        """Start `adapter.apply(batch)` on the sender's thread (the previous call must be settled)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"push-{self._name}")
        self.call, self.context = self._pool.submit(adapter.apply, batch), context

    def take(self) -> tuple[Future | None, tuple | None]:
        """The call in flight and its context, now the caller's to settle."""
        call, context, self.call, self.context = self.call, self.context, None, None
        return call, context


class Engine:
    """Runs pulls, pushes and reconciles of configured adapters against one store."""

    def __init__(self, settings: Settings, store: Store, adapters: dict[str, Adapter],
                 stop: threading.Event | None = None,
                 on_new_events: Callable[[str], None] | None = None, *, report_progress: bool = False,
                 collect_less: bool = True):
        self.settings = settings
        self.store = store
        self.adapters = adapters
        self.stop = stop or threading.Event()
        self.on_new_events = on_new_events
        # Log and store the progress of long pushes and reconciles (connector.progress).
        self.report_progress = report_progress
        # Its phases run with fewer cyclic garbage collections (connector.collector), unless the
        # process does other work meanwhile whose garbage should not wait (the daemon's webhooks).
        self.collect_less = collect_less
        # How many items a dry-run report lists (None: every one, for `sync --dry-run --json`).
        self.dry_run_list_limit: int | None = DRY_RUN_LIST_LIMIT

    # -- whole cycles -------------------------------------------------------------

    def cycle(self, name: str, *, dry_run: bool = False, push_only: bool = False) -> CycleReport:
        """Pull then push one adapter; the run is recorded (unless dry), an error is in the report."""
        report = CycleReport(name, phase="push" if push_only else "cycle", dry_run=dry_run,
                             list_limit=self.dry_run_list_limit)
        # A dry run changes nothing: what it staged and promoted is rolled back, as in sync_once.
        with (self._kept(name, dry_run), retry_budget_held(self.adapters[name]),
              self.store.rolled_back() if dry_run else nullcontext()):
            return self._recorded(report, lambda: self._pull_and_push(report, push_only))

    def _pull_and_push(self, report: CycleReport, push_only: bool) -> None:
        pull_error: Exception | None = None
        if not push_only:
            try:
                self.pull(report.adapter, report)
            except Exception as exc:  # re-raised below: a source that cannot be read can still be written
                pull_error = exc
        self.push(report.adapter, report)
        if pull_error is not None:
            raise pull_error

    def sync_once(self, names: list[str] | None = None, *, dry_run: bool = False) -> list[CycleReport]:
        """Pull every adapter, then push to every adapter, so one call spreads everything it read.

        A failing adapter does not stop the others; its error is in its report.
        """
        names = names or list(self.adapters)
        reports = {name: CycleReport(name, dry_run=dry_run, list_limit=self.dry_run_list_limit) for name in names}
        with ExitStack() as budgets, self.store.rolled_back() if dry_run else nullcontext():
            for name in names:
                budgets.enter_context(self._kept(name, dry_run))
                budgets.enter_context(retry_budget_held(self.adapters[name]))
            for name in names:
                self._timed(reports[name], lambda: self.pull(name, reports[name]))
            for name in names:  # a source that could not be read is still written to
                pull_error = reports[name].error
                self._timed(reports[name], lambda: self.push(name, reports[name]))
                reports[name].error = pull_error or reports[name].error
        if not dry_run:
            for report in reports.values():
                self._record_run(report)
        return list(reports.values())

    # -- pull -------------------------------------------------------------------------

    def pull(self, name: str, report: CycleReport) -> None:
        """Read changes since the saved cursor; stage new opt-outs; promote them within the guard."""
        adapter, config = self.adapters[name], self.settings.adapter(name)
        if not (config.reads and adapter.capabilities.read_changes):
            return
        checkpoint = self.store.checkpoint(name)
        if checkpoint.paused:
            report.paused = True
            report.waiting_approval = self.store.staged_count(name)
            return
        policy = self.settings.resubscribe_policy(config)
        for page in adapter.read_changes(checkpoint.read_cursor):
            report.absorb(self.store.ingest_page(name, page, resubscribe_policy=policy))
            if report.dry_run:
                report.keep(report.would_reject, page.rejected)
            if self.stop.is_set():
                break  # the cursor is saved per page; the rest comes next cycle
        self._promote_within_guard(name, config, report)

    def _promote_within_guard(self, name: str, config: AdapterSettings, report: CycleReport) -> None:
        staged = self.store.staged_count(name)
        if report.dry_run:
            report.keep(report.would_add, self.store.staged_optouts(name, report.list_limit))
        if staged > config.max_new_per_cycle:
            self.store.pause(name)
            report.paused = True
            report.waiting_approval = staged
            report.notes.append(
                f"{staged} new opt-outs exceed max_new_per_cycle={config.max_new_per_cycle}; paused until "
                f"'optout-sync approve {name} --count {staged}'")
        elif staged:
            report.added += self.store.promote(name)
            if report.added and self.on_new_events and not report.dry_run:
                self.on_new_events(name)

    def approve(self, name: str, count: int) -> int:
        """Apply a paused adapter's staged opt-outs when `count` is exactly their number."""
        self.settings.adapter(name)
        checkpoint = self.store.checkpoint(name)
        staged = self.store.staged_count(name)
        if not checkpoint.paused:
            raise RefusedError(f"adapter {name!r} is not paused; nothing to approve")
        if count != staged:
            raise RefusedError(f"adapter {name!r} has {staged} staged opt-outs, not {count}; nothing applied")
        with self.store.transaction():
            added = self.store.promote(name)
            self.store.unpause(name)
        return added

    # -- push ---------------------------------------------------------------------------

    def push(self, name: str, report: CycleReport) -> None:
        """Apply every suppression event after the watermark that this sink still needs."""
        adapter, config = self.adapters[name], self.settings.adapter(name)
        if not (config.writes and adapter.capabilities.write):
            return
        prepare = getattr(adapter, "prepare", None)  # optional: a sink that makes itself ready to be read
        if prepare is not None and not report.dry_run:
            prepare()
        if not report.dry_run:
            self._remove_lifted_by_recipients(name, adapter, report)
        batch_size = adapter.capabilities.batch_size
        start = scan_from = self.store.checkpoint(name).applied_seq
        batch: list[tuple[PendingEvent, OptOut]] = []
        skipped: list[PushOutcome] = []
        with self._progress(name, "push", report) as progress, _Sender(name) as sender:
            while not self.stop.is_set():
                pending, scanned_to = self.store.pending_events(name, scan_from, max(SCAN_WINDOW, batch_size))
                if scanned_to == scan_from:
                    break
                for event in pending:
                    target = self._as_sent(event, adapter, config)
                    if target is None:
                        skipped.append(PushOutcome(event.seq, event.optout, None,
                                                   f"topic {event.optout.scope!r} is not mapped at {name}"))
                        continue
                    batch.append((event, target))
                    if len(batch) == batch_size:
                        if not self._apply(name, adapter, batch, skipped, event.seq, report, sender):
                            return
                        # The total is counted at the first report only (a long push): what is
                        # done plus what is still pending after this batch.
                        progress.step(len(batch) + len(skipped),
                                      lambda seq=event.seq: self.store.pending_summary(name, seq)[0])
                        batch, skipped = [], []
                scan_from = scanned_to
            if not self.stop.is_set() and (batch or skipped or scan_from > start):
                if not self._apply(name, adapter, batch, skipped, scan_from, report, sender):
                    return
            self._settle(name, sender, report)
            self._record_unrecorded(name, sender)

    def _remove_lifted_by_recipients(self, name: str, adapter: Adapter, report: CycleReport) -> None:
        """Remove here what a recipient's re-subscribe elsewhere lifted (policy everywhere), as `lift --propagate`.

        Only sinks this daemon had applied the opt-out to are due. A transient failure stays due
        for the next cycle; anything else is recorded, as a lift's removals are.
        """
        due = resubscribes.removals_due(self.store, name)
        if not due:
            return
        if not adapter.capabilities.remove:
            for seq, optout in due:
                resubscribes.finish_removal(self.store, name, seq, optout, False,
                                            "this adapter cannot remove suppressions; remove it there by hand")
            return
        for start in range(0, len(due), adapter.capabilities.batch_size):
            chunk = due[start:start + adapter.capabilities.batch_size]
            try:
                results = self._scrubbed(name, adapter.remove([optout for _, optout in chunk]))
            except TransientError as exc:
                report.notes.append(f"removals after a recipient's re-subscribe wait for the next cycle: {exc}")
                return
            for (seq, optout), result in zip(chunk, results):
                if result.outcome == TRANSIENT:
                    continue
                message = result.message or ("removed" if result.outcome == "applied" else "was not there")
                resubscribes.finish_removal(self.store, name, seq, optout, result.ok,
                                            message if result.ok else f"failed: {message}")
                report.removed += int(result.ok)

    def _as_sent(self, event: PendingEvent, adapter: Adapter, config: AdapterSettings) -> OptOut | None:
        return self._mapped(event.optout, adapter, config)

    def _mapped(self, optout: OptOut, adapter: Adapter, config: AdapterSettings) -> OptOut | None:
        """The opt-out as this sink can hold it: as is, as all-email (unmapped policy), or None."""
        if optout.scope == GLOBAL_SCOPE or optout.scope in adapter.capabilities.scopes:
            return optout
        if self.settings.unmapped_policy(config) == "global":
            return replace(optout, scope=GLOBAL_SCOPE, details={**(optout.details or {}), "topic": optout.scope})
        return None

    def _apply(self, name: str, adapter: Adapter, batch: list[tuple[PendingEvent, OptOut]],
               skipped: list[PushOutcome], handled_to: int, report: CycleReport, sender: _Sender) -> bool:
        """Send one batch (after settling the one before it); False when the push should stop for this cycle.

        The batch is at the sink when this returns; `_settle` takes in its results before the
        next batch is sent, or at the end of the push. Meanwhile the batch before it is recorded.
        """
        report.skipped += len(skipped)
        if report.dry_run:
            report.pushed += len(batch)
            report.keep(report.would_push, (sent for _, sent in batch))
            return True
        if not self._settle(name, sender, report):
            return False
        if not batch:
            self._record_unrecorded(name, sender)
            self.store.record_push(name, skipped, handled_to)
            return True
        seqs = [event.seq for event, _ in batch]
        resent = self.store.mark_inflight(name, seqs)  # committed before the call: see Store.mark_inflight
        sender.send(adapter, [sent for _, sent in batch], (batch, skipped, handled_to, seqs, resent))
        self._record_unrecorded(name, sender)  # the batch before, while this one is at the sink
        return True

    def _settle(self, name: str, sender: _Sender, report: CycleReport) -> bool:
        """Take in the results of the batch at the sink, if any; False when the push should stop.

        A batch that went through whole is recorded while the next one is at the sink; one with
        parked items or an error is recorded at once, and nothing more is sent.
        """
        call, context = sender.take()
        if call is None:
            return True
        batch, skipped, handled_to, seqs, resent = context
        error: BaseException | None = None
        try:
            results = self._scrubbed(name, call.result())
        except TransientError as exc:
            error = exc
            results = [ApplyResult(sent, TRANSIENT, str(exc)) for _, sent in batch]
        except Exception:
            self._record_unrecorded(name, sender)
            self.store.clear_inflight(name, seqs)  # a mark outlives its call only if the process dies
            raise
        if len(results) != len(batch):
            self._record_unrecorded(name, sender)
            self.store.clear_inflight(name, seqs)
            raise PermanentError(f"adapter {name!r} returned {len(results)} results for {len(batch)} items")
        outcomes = [PushOutcome(event.seq, event.optout, result) for (event, _), result in zip(batch, results)]
        parked = [o.seq for o in outcomes if o.result.outcome == TRANSIENT]
        # The watermark never passes an event that is not applied yet.
        watermark = min(parked) - 1 if parked else handled_to
        self._record_unrecorded(name, sender)
        if parked or error is not None:
            self.store.record_push(name, outcomes + skipped, watermark, resent)
        else:
            sender.unrecorded = (outcomes + skipped, watermark, resent)
        report.pushed += sum(1 for o in outcomes if o.result.ok)
        report.failed += sum(1 for o in outcomes if not o.result.ok and o.result.outcome != TRANSIENT)
        report.parked += len(parked)
        if error is not None:
            raise error
        return not parked

    def _record_unrecorded(self, name: str, sender: _Sender) -> None:
        if sender.unrecorded is not None:
            outcomes, watermark, resent = sender.unrecorded
            sender.unrecorded = None
            self.store.record_push(name, outcomes, watermark, resent)

    # -- reconcile ----------------------------------------------------------------------

    def reconcile(self, name: str, *, dry_run: bool = False) -> CycleReport:
        """Diff the adapter's full set with the store: ingest what the store lacks, re-apply drift.

        The run is recorded (unless dry); an error is in the report.
        """
        report = CycleReport(name, phase="reconcile", dry_run=dry_run, list_limit=self.dry_run_list_limit)
        with self._kept(name, dry_run), retry_budget_held(self.adapters[name]):
            return self._recorded(report, lambda: self._reconcile(name, report))

    def _reconcile(self, name: str, report: CycleReport) -> None:
        adapter, config = self.adapters[name], self.settings.adapter(name)
        if not adapter.capabilities.read_all:
            raise ConfigError(f"adapter {name!r} cannot read its full set, so it cannot be reconciled")
        ingest = config.reads and adapter.capabilities.read_changes
        writes = config.writes and adapter.capabilities.write
        with self.store.rolled_back() if report.dry_run else nullcontext():
            # A sink that is only written needs only what it lacks: a merge against the store's
            # primary key (state/merge_diff.py) finds that without loading the read into a table.
            merge = None if ingest or not writes else SinkMerge(
                self.store, set(adapter.capabilities.scopes), self.settings.unmapped_policy(config) == "global")
            if merge is None:
                self.store.begin_source_set()
            with self._progress(name, "reconcile_read", report) as progress:
                for page in prefetched(adapter.read_all(), self.stop):
                    if page.resubscribes and ingest:
                        # Before the diff: a recipient's re-subscribe there must release, not be re-applied.
                        report.released += self.store.ingest_page(
                            name, Page(resubscribes=page.resubscribes), save_cursor=False,
                            resubscribe_policy=self.settings.resubscribe_policy(config)).released
                    if merge is None:
                        self.store.add_to_source_set(page.optouts)
                    else:
                        merge.feed(page.optouts)
                    report.pulled += len(page.optouts)
                    report.rejected += len(page.rejected)  # listed when the rows were first pulled
                    progress.step(len(page.optouts))  # no total: a full read does not say its size
                    if self.stop.is_set():
                        return  # a partial full set must not be diffed
            if ingest and not self.store.checkpoint(name).paused:
                report.absorb(self.store.stage_from_source_set(name))
                self._promote_within_guard(name, config, report)
            if merge is not None:
                merge.finish()
            if writes:
                self._reapply_missing(name, adapter, config, report, merged=merge is not None)
            if not report.dry_run:
                self.store.set_checkpoint(name, last_reconcile_at=utc_now(), reconcile_requested=0)

    def _reapply_missing(self, name: str, adapter: Adapter, config: AdapterSettings,
                         report: CycleReport, *, merged: bool = False) -> None:
        as_global = self.settings.unmapped_policy(config) == "global"
        missing = self.store.missing_at_source(set(adapter.capabilities.scopes), as_global,
                                               adapter.capabilities.batch_size, name, merged=merged)
        with self._progress(name, "reconcile_apply", report) as progress:
            for rows in missing:
                report.missing_at_source += len(rows)
                if report.dry_run:
                    continue
                self._reapply(name, adapter, config, report, rows)
                progress.step(len(rows))  # no total: the missing rows are found as they are re-applied
                if self.stop.is_set():
                    return

    def _reapply(self, name: str, adapter: Adapter, config: AdapterSettings, report: CycleReport,
                 rows: list[tuple[int, OptOut]]) -> None:
        """Re-apply one batch of suppressions the sink's full read lacked, and record the outcomes."""
        # missing_at_source only yields rows this sink can represent, so _mapped is never None here.
        sent = [(seq, self._mapped(o, adapter, config)) for seq, o in rows]
        seqs = [seq for seq, _ in rows]
        resent = self.store.mark_inflight(name, seqs)
        try:
            results = self._scrubbed(name, adapter.apply([o for _, o in sent]))
        except Exception:
            self.store.clear_inflight(name, seqs)
            raise
        self.store.record_applied(name, [(seq, original, result)
                                         for (seq, original), result in zip(rows, results)], resent)
        report.pushed += sum(1 for r in results if r.ok)
        report.parked += sum(1 for r in results if r.outcome == TRANSIENT)
        report.failed += sum(1 for r in results if not r.ok and r.outcome != TRANSIENT)

    def reconcile_due(self, name: str, schedule_start: str | None = None) -> bool:
        """True when the adapter's reconcile is requested or older than its reconcile_every.

        An adapter never reconciled counts from `schedule_start` (when the daemon began driving it);
        without one it is not due.
        """
        config = self.settings.adapter(name)
        checkpoint = self.store.checkpoint(name)
        if checkpoint.reconcile_requested:
            return True
        since = checkpoint.last_reconcile_at or schedule_start
        if not config.reconcile_every or since is None:
            return False
        age = (datetime.fromisoformat(utc_now()) - datetime.fromisoformat(since))
        return age.total_seconds() >= config.reconcile_every

    # -- bookkeeping -----------------------------------------------------------------------

    def _progress(self, name: str, phase: str, report: CycleReport) -> WorkProgress:
        """A WorkProgress for this work; one that never reports when progress is off or in a dry run."""
        every = None if self.report_progress and not report.dry_run else float("inf")
        return WorkProgress(self.store, name, phase, every=every)

    def _kept(self, name: str, dry_run: bool) -> AbstractContextManager:
        return memory_kept(self.adapters[name], self.store, name, save=not dry_run)

    def _timed(self, report: CycleReport, work: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            with fewer_collections() if self.collect_less else nullcontext():
                work()
        except Exception as exc:  # recorded in the report; the caller decides what to do with it
            report.error = exc
        report.duration_ms += int((time.monotonic() - started) * 1000)

    def _recorded(self, report: CycleReport, work: Callable[[], None]) -> CycleReport:
        started_at = utc_now()
        self._timed(report, work)
        if not report.dry_run:
            self._record_run(report, started_at)
        return report

    def _secrets(self, name: str) -> list[str]:
        config = self.settings.adapter(name)
        values = (getattr(config, field) for field in type(config).model_fields)
        return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and v.get_secret_value()]

    def _scrubbed(self, name: str, results: list[ApplyResult]) -> list[ApplyResult]:
        """Per-item messages with the adapter's secrets blanked, should a vendor have echoed one."""
        secrets = self._secrets(name)
        if not secrets:
            return results
        cleaned = []
        for result in results:
            message = result.message
            for secret in secrets:
                message = message.replace(secret, "***")
            cleaned.append(result if message == result.message else replace(result, message=message))
        return cleaned

    def _record_run(self, report: CycleReport, started_at: str | None = None) -> None:
        self.store.record_run(
            report.adapter, report.phase, started_at or utc_now(), report.duration_ms,
            pulled=report.pulled, staged=report.staged, pushed=report.pushed,
            failed=report.failed + report.parked, rejected=report.rejected, paused=report.paused,
            error=report.error)

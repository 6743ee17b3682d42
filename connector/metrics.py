"""Prometheus metrics of one daemon: per adapter counters, state gauges and latency histograms.

Each daemon owns a private CollectorRegistry, so several can run in one process
(tests). Workers feed the counters from cycle reports; the monitor feeds the
gauges and the apply-latency histogram from the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from state import dashboard
from state.store import Store

from .engine import CycleReport

PREFIX = "optout_sync"
# Cycles take milliseconds on files and up to minutes against a slow vendor.
CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# From seconds (a file sink) up past the 2-day Gmail/Yahoo bar, where a late opt-out hurts.
LATENCY_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86_400, 2 * 86_400, 7 * 86_400)
# Applied events read per query when feeding the latency histogram, so memory stays bounded.
LATENCY_CHUNK = 5000


class Metrics:
    """The daemon's metrics; every per-adapter series exists (at 0) from the start."""

    def __init__(self, adapters: Iterable[str]):
        self.registry = CollectorRegistry()
        self.adapters = list(adapters)
        labels = ["adapter"]

        def counter(name: str, text: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", text, [*labels, *extra], registry=self.registry)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", text, labels, registry=self.registry)

        self.pulled = counter("pulled", "Opt-outs read from the adapter as a source.")
        self.pushed = counter("pushed", "Opt-outs the adapter holds after an apply (new or already held).")
        self.failed = counter("failed", "Applies the adapter refused for good (listed by `optout-sync failures`).")
        self.parked = counter("parked", "Applies that failed transiently and wait for a later cycle.")
        self.rejected = counter("rejected", "Malformed input rows or records read from the adapter.")
        self.retries = counter("http_retries", "HTTP calls repeated after a transient failure.")
        self.rate_limited = counter("http_rate_limited", "HTTP 429 (rate limited) answers.")
        self.cycles = counter("cycles", "Cycles run, by phase and outcome (ok or error).", ("phase", "outcome"))
        self.pending = gauge("pending_events", "Suppression events the adapter still has to apply.")
        self.oldest_age = gauge("oldest_unapplied_age_seconds",
                                "Age of the oldest suppression not yet applied to the adapter (0: none).")
        self.last_success = gauge("last_success_timestamp_seconds",
                                  "Unix time of the adapter's last cycle without error (0: never).")
        self.paused = gauge("paused", "1 while the mass-change guard holds the adapter for approval.")
        self.staged = gauge("staged", "New opt-outs from the adapter held by the guard for approval.")
        self.open_failures = gauge("open_failures", "Open failures of the adapter (`optout-sync failures`).")
        self.lag_alarm = gauge("lag_alarm", "1 while the oldest unapplied opt-out is older than max_lag.")
        self.cycle_seconds = Histogram(f"{PREFIX}_cycle_duration_seconds", "Duration of one cycle.",
                                       [*labels, "phase"], buckets=CYCLE_BUCKETS, registry=self.registry)
        self.apply_latency = Histogram(
            f"{PREFIX}_apply_latency_seconds",
            "From when the source says an opt-out happened (else when it was stored) to its apply here.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        for name in self.adapters:
            for metric in (self.pulled, self.pushed, self.failed, self.parked, self.rejected, self.retries,
                           self.rate_limited, self.pending, self.oldest_age, self.last_success, self.paused,
                           self.staged, self.open_failures, self.lag_alarm, self.apply_latency):
                metric.labels(name)
        self._latency_seq: int | None = None

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics and their content type: the format the scraper's Accept header asks for, else Prometheus text."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    # -- fed by the workers ---------------------------------------------------------

    def observe_report(self, report: CycleReport) -> None:
        """Count what one cycle or reconcile did."""
        name = report.adapter
        self.pulled.labels(name).inc(report.pulled)
        self.pushed.labels(name).inc(report.pushed)
        self.failed.labels(name).inc(report.failed)
        self.parked.labels(name).inc(report.parked)
        self.rejected.labels(name).inc(report.rejected)
        outcome = "error" if report.error is not None else "ok"
        self.cycles.labels(name, report.phase, outcome).inc()
        self.cycle_seconds.labels(name, report.phase).observe(report.duration_ms / 1000)

    def observe_worker_error(self, adapter: str) -> None:
        """Count a cycle that failed before it could report (the store or the adapter could not be opened)."""
        self.cycles.labels(adapter, "cycle", "error").inc()

    def count_http_retry(self, adapter: str) -> None:
        """Count one HTTP call repeated after a transient failure (for the HTTP layer to call)."""
        self.retries.labels(adapter).inc()

    def count_rate_limited(self, adapter: str) -> None:
        """Count one HTTP 429 answer (for the HTTP layer to call)."""
        self.rate_limited.labels(adapter).inc()

    # -- fed by the monitor ---------------------------------------------------------

    def set_state(self, adapter: str, *, pending: int, oldest_age_s: float | None, last_success_at: str | None,
                  paused: bool, staged: int, open_failures: int, lag_alarm: bool) -> None:
        """Set the adapter's gauges from what the store holds now."""
        self.pending.labels(adapter).set(pending)
        self.oldest_age.labels(adapter).set(oldest_age_s or 0)
        self.last_success.labels(adapter).set(
            datetime.fromisoformat(last_success_at).timestamp() if last_success_at else 0)
        self.paused.labels(adapter).set(int(paused))
        self.staged.labels(adapter).set(staged)
        self.open_failures.labels(adapter).set(open_failures)
        self.lag_alarm.labels(adapter).set(int(lag_alarm))

    def observe_applies(self, store: Store) -> int:
        """Feed the apply-latency histogram with applies recorded since the last call; how many.

        The first call only notes where the event log ends: applies from before the
        daemon started are not this process's latency.
        """
        conn = store.conn
        # Read the end first and stop there: events committed meanwhile are for the next call.
        end = conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()[0]
        if self._latency_seq is None:
            self._latency_seq = end
            return 0
        after, observed = self._latency_seq, 0
        while after < end:
            rows = dashboard.apply_latencies(store, after, end, LATENCY_CHUNK)
            for _seq, target, seconds in rows:
                if target in self.adapters and seconds is not None:
                    # A source clock ahead of ours would give a negative latency.
                    self.apply_latency.labels(target).observe(max(0.0, seconds))
                    observed += 1
            if len(rows) < LATENCY_CHUNK:
                break
            after = rows[-1][0]
        self._latency_seq = end
        return observed

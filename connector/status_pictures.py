"""The status page's pictures and lists, below its adapter table.

New opt-outs per day (by reason, by source), each adapter's lag and pending count over the
last 24 hours (from the daemon's in-memory history), the open failures and the last events.
Addresses are always masked and every value escaped; each read is bounded (state/dashboard.py).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from state import dashboard
from state.store import Store

from .charts import DURATION_STEPS, compact, esc, line_chart, stacked_bars
from .history import LagHistory
from .logs import mask_rejected, mask_value
from .settings import Settings

STYLE = """
section { margin: 1.75rem 0 0; }
h2 { font-size: 1.15rem; margin: 0 0 .35rem; }
p.note { margin: .2rem 0 .6rem; color: #555; font-size: .9rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 360px), 1fr)); gap: 1rem 1.5rem; }
figure { margin: 0; min-width: 0; }
figcaption { font-weight: 600; font-size: .95rem; margin-bottom: .25rem; }
svg.chart { width: 100%; height: auto; display: block; font-size: 11px; }
svg.chart .grid { stroke: #e4e4e4; }
svg.chart .axis { stroke: #777; }
svg.chart .tick { fill: #555; font-size: 10px; }
svg.chart .axis-label { fill: #333; font-size: 11px; }
svg.chart .empty { fill: #777; font-size: 12px; }
ul.legend { list-style: none; margin: .3rem 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: .2rem .9rem;
            font-size: .85rem; }
ul.legend li { overflow-wrap: anywhere; }
.swatch { display: inline-block; width: .75rem; height: .75rem; margin-right: .3rem; vertical-align: -.05rem;
          border-radius: .1rem; }
.scroll { overflow-x: auto; max-width: 100%; }
p.summary, code { overflow-wrap: anywhere; }
@media (max-width: 600px) {
  body { margin: .75rem; }
  svg.chart .tick { font-size: 12px; }
  svg.chart .axis-label { font-size: 12px; }
  table { font-size: .85rem; }
  th, td { padding: .35rem .4rem; }
}
"""


def render(settings: Settings, store: Store, history: LagHistory | None,
           counter: dashboard.DailyOptOutCounter, now: float | None = None) -> str:
    """The HTML sections: per-day charts, lag and pending charts, open failures, last events."""
    now = time.time() if now is None else now
    return "\n".join([
        _per_day(counter.refresh(store.conn, datetime.fromtimestamp(now, timezone.utc))),
        _lag(settings, history, now),
        _failures(*dashboard.open_failures(store.conn, [a.name for a in settings.adapters])),
        _events(dashboard.last_events(store.conn)),
    ])


def _per_day(daily: dashboard.DailyOptOuts) -> str:
    return f"""<section id="per-day">
<h2>New opt-outs per day, last {len(daily.days)} days</h2>
<p class="note">{esc(f"{daily.total:,}")} new opt-outs from {esc(daily.days[0])} to {esc(daily.days[-1])} (UTC days).</p>
<div class="charts">
<figure><figcaption>By reason</figcaption>{stacked_bars("chart-reason", "New opt-outs per day by reason",
                                                         daily.days, daily.by_reason)}</figure>
<figure><figcaption>By source</figcaption>{stacked_bars("chart-source", "New opt-outs per day by source",
                                                         daily.days, daily.by_source)}</figure>
</div>
</section>"""


def _lag(settings: Settings, history: LagHistory | None, now: float) -> str:
    sinks = {a.name for a in settings.adapters if a.writes}
    if history is None:
        return ('<section id="lag"><h2>Lag and pending, last 24 hours</h2>'
                '<p class="note">Shown while the daemon runs: it samples them in memory.</p></section>')
    series = {name: samples for name, samples in history.series(now).items() if name in sinks}
    start = now - history.window_s
    lag = {name: [(s.at, s.lag_s or 0.0) for s in samples] for name, samples in series.items()}
    pending = {name: [(s.at, float(s.pending)) for s in samples] for name, samples in series.items()}
    note = ""
    if not history.covers_window(now):
        started = datetime.fromtimestamp(history.started_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        note = (f'<p class="note" id="history-note">The daemon started {esc(_short(now - history.started_at))} ago '
                f"({esc(started)}): the history covers only that time (it is kept in memory, one sample a "
                "minute).</p>")
    return f"""<section id="lag">
<h2>Lag and pending, last 24 hours</h2>
{note}<div class="charts">
<figure><figcaption>Lag (age of the oldest opt-out not yet applied)</figcaption>{line_chart(
    "chart-lag", "Lag per adapter, last 24 hours", lag, start, now, "lag", _short, y_floor=60,
    y_steps=DURATION_STEPS)}</figure>
<figure><figcaption>Pending opt-outs</figcaption>{line_chart(
    "chart-pending", "Pending opt-outs per adapter, last 24 hours", pending, start, now, "pending",
    compact)}</figure>
</div>
</section>"""


def _failures(rows: list[dict], total: int) -> str:
    shown = f"the newest {len(rows)} of {total:,}" if total > len(rows) else f"{total:,}"
    rest = (f" {total - len(rows):,} more are not shown: <code>optout-sync failures</code> lists them all."
            if total > len(rows) else "")
    body = "\n".join(
        f'<tr id="failure-{esc(row["id"])}"><td class="num">{esc(row["id"])}</td><td>{esc(row["adapter"])}</td>'
        f'<td>{esc(row["kind"])}</td><td>{esc(_failed_item(row))}</td>'
        f'<td class="error">{esc(mask_rejected(row["message"], row["value"]))}</td>'
        f'<td class="when">{esc(_when(row["last_at"]))}</td><td class="num">{esc(row["attempts"])}</td></tr>'
        for row in rows)
    table = ("" if not rows else
             '<div class="scroll"><table id="failures"><thead><tr><th>Id</th><th>Adapter</th><th>Kind</th>'
             "<th>What</th><th>Message</th><th>Last seen</th><th>Attempts</th></tr></thead>"
             f"<tbody>\n{body}\n</tbody></table></div>")
    return f"""<section id="open-failures">
<h2>Open failures</h2>
<p class="note" id="failures-count">{esc(shown)} open, newest first.{rest}</p>
{table}
</section>"""


def _failed_item(row: dict) -> str:
    if row["address"]:
        return f"{row['address']} ({row['scope']})" if row["scope"] else row["address"]
    where = row["location"] or ""
    return f"{where}: {mask_value(row['value'])}" if row["value"] else where


def _events(rows: list[dict]) -> str:
    body = "\n".join(
        f'<tr id="event-{esc(row["seq"])}"><td class="num">{esc(row["seq"])}</td>'
        f'<td class="when">{esc(_when(row["recorded_at"]))}</td><td>{esc(row["kind"])}</td>'
        f'<td>{esc(row["address"])}</td><td>{esc(row["scope"])}</td><td>{esc(row["reason"] or "")}</td>'
        f'<td>{esc(row["source"] or row["target"] or "")}</td><td>{esc(row["message"] or "")}</td></tr>'
        for row in rows)
    return f"""<section id="last-events">
<h2>Last {len(rows)} events</h2>
<p class="note">Newest first; <code>optout-sync history ADDRESS</code> shows one address's events.</p>
<div class="scroll"><table id="events"><thead><tr><th>Seq</th><th>When (UTC)</th><th>Kind</th><th>Address</th>
<th>Scope</th><th>Reason</th><th>Adapter</th><th>Message</th></tr></thead>
<tbody>
{body}
</tbody></table></div>
</section>"""


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _short(seconds: float) -> str:
    """'0s', '45s', '12m', '3h 5m', '2d 4h': short enough for an axis tick."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86_400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(whole // 3600, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"

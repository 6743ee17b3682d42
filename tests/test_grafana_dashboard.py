"""contrib/grafana/optout-sync.json queries only metrics, and labels, that the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from connector.engine import CycleReport
from connector.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "optout-sync.json"
# PromQL's functions and aggregations the dashboard may call, and its keywords.
FUNCTIONS = {"rate", "irate", "increase", "sum", "max", "min", "avg", "count", "histogram_quantile", "time",
             "label_values", "clamp_min", "topk", "delta", "deriv", "changes", "resets", "abs"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset"}
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def exported() -> dict[str, set[str]]:
    """Every sample name a daemon's /metrics shows, with its label names (every series made to exist)."""
    metrics = Metrics(["crm", "sink"])
    metrics.observe_report(CycleReport("crm", phase="cycle"))
    metrics.apply_latency.labels("sink").observe(3)
    text = metrics.render()[0].decode()
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', rest.split("}")[0])) if rest else set()
            names.setdefault(name.split(" ")[0], set()).update(labels)
    return names


def queries(dashboard: dict) -> list[str]:
    """Every PromQL text in the dashboard: panel targets (rows' panels too) and template variables."""
    found = []

    def walk(panels):
        for panel in panels:
            found.extend(target["expr"] for target in panel.get("targets", []) if "expr" in target)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names one PromQL expression uses."""
    labels: set[str] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)             # string values
    text = re.sub(r"\[[^\]]*\]", "", text)                       # range selectors
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", "", text)
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels.update(_IDENTIFIER.findall(grouping))
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    values = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_]\w*)\s*\)\s*", text)
    if values:
        return {values[1]}, labels | {values[2]}
    metrics = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        called = text[match.end():].lstrip().startswith("(")
        if word in KEYWORDS or word.startswith("__") or text[match.start() - 1:match.start()] == "$":
            continue
        if called:
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
            continue
        if re.fullmatch(r"\d+(\.\d+)?", word):
            continue
        metrics.add(word)
    return metrics, labels


def test_every_query_names_metrics_and_labels_the_daemon_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    available = exported()
    exprs = queries(dashboard)
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        metrics, labels = names_in(expr)
        assert metrics, f"no metric in {expr!r}"
        unknown = metrics - set(available)
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which the daemon does not export"
        known_labels = set().union(*(available[name] for name in metrics))
        assert labels <= known_labels, f"{expr!r} uses labels {sorted(labels - known_labels)} its metrics lack"
        used |= metrics
    # What the issue asks the dashboard to show: throughput, lag, failures, 429s, retries, cycle durations.
    for needed in ("optout_sync_pulled_total", "optout_sync_pushed_total", "optout_sync_oldest_unapplied_age_seconds",
                   "optout_sync_pending_events", "optout_sync_failed_total", "optout_sync_http_rate_limited_total",
                   "optout_sync_http_retries_total", "optout_sync_cycle_duration_seconds_bucket"):
        assert needed in used, f"the dashboard does not chart {needed}"


def test_the_query_parser_finds_what_a_wrong_query_names():
    metrics, labels = names_in('sum by (adapter, le) (rate(optout_sync_pushed{adapter=~"$adapter", x="a{b}"}[5m]))'
                               " / on (adapter) group_left optout_sync_up")
    assert metrics == {"optout_sync_pushed", "optout_sync_up"} and labels == {"adapter", "le", "x"}
    assert "optout_sync_pushed" not in exported() and "optout_sync_pushed_total" in exported()
    assert names_in("label_values(optout_sync_pending_events, adapter)") == ({"optout_sync_pending_events"},
                                                                            {"adapter"})

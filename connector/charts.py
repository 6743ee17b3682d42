"""Small charts for the status page, drawn on the server as inline SVG (no script).

Each chart is an <svg> with a viewBox, so it scales to the width it is given; every mark
carries a <title> (the browser's tooltip, and what a screen reader reads) and data-*
attributes with its value. Every text is masked (addresses) and HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

from .logs import mask_addresses

# Okabe-Ito colours (told apart with the common colour blindnesses); grey for "other".
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#8c6d1f")
OTHER_COLOUR = "#9a9a9a"
OTHER = "other"
WIDTH, HEIGHT = 420, 230
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 10, 40


def esc(value: object) -> str:
    """Text for HTML or SVG: addresses masked, then escaped."""
    return html.escape(mask_addresses(str(value)), quote=True)


COUNT_STEPS = (1, 2, 3, 5)
# Seconds a person reads at a glance on a duration axis: 15 s, 1 min, 15 min, 1 h, 6 h, 1 d...
DURATION_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 4 * 3600, 6 * 3600,
                  12 * 3600, 86_400, 2 * 86_400, 7 * 86_400)
GRID_LINES = 4


def nice_ceiling(value: float, floor: float = 1, steps: tuple[float, ...] = COUNT_STEPS) -> float:
    """The axis maximum: 4 grid steps, each a round number (1, 2, 3 or 5 times a power of ten by
    default, or one of `steps` if it lists its own scale), covering `value` and at least `floor`.
    """
    need = max(value, floor) / GRID_LINES
    if steps is not COUNT_STEPS:
        for step in steps:
            if step >= need:
                return step * GRID_LINES
        return math.ceil(need / steps[-1]) * steps[-1] * GRID_LINES
    power = 10 ** max(0, math.floor(math.log10(need))) if need >= 1 else 1
    for step in COUNT_STEPS:
        if step * power >= need:
            return step * power * GRID_LINES
    return 10 * power * GRID_LINES


def compact(value: float) -> str:
    """A count short enough for an axis tick: 950, 2k, 1.5M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def top_series(series: dict[str, list[float]], keep: int = len(PALETTE)) -> list[tuple[str, list[float], str]]:
    """The `keep` largest series by total, each with its colour; the rest summed as 'other'."""
    ordered = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    shown = [(name, values, PALETTE[n]) for n, (name, values) in enumerate(ordered[:keep])]
    rest = ordered[keep:]
    if rest:
        summed = [sum(values[i] for _name, values in rest) for i in range(len(rest[0][1]))]
        shown.append((f"{OTHER} ({len(rest)})", summed, OTHER_COLOUR))
    return shown


def legend(items: list[tuple[str, str]], chart_id: str) -> str:
    """An HTML legend (it wraps on a narrow screen, as SVG text would not): (label, colour) pairs."""
    entries = "".join(f'<li><span class="swatch" style="background:{colour}"></span>{esc(label)}</li>'
                      for label, colour in items)
    return f'<ul class="legend" id="{esc(chart_id)}-legend">{entries}</ul>'


def _frame(chart_id: str, title: str, y_max: float, y_label: str, x_label: str,
           y_text: Callable[[float], str]) -> list[str]:
    """The opening <svg>, its title, the y grid with tick labels and both axis labels."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
             f' aria-labelledby="{esc(chart_id)}-title" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{esc(chart_id)}-title">{esc(title)}</title>']
    for n in range(5):
        value = y_max * n / 4
        y = TOP + plot_h - plot_h * n / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">{esc(y_text(value))}</text>')
    parts.append(f'<text class="axis-label" x="{LEFT + (WIDTH - LEFT - RIGHT) / 2:.1f}" y="{HEIGHT - 4}"'
                 f' text-anchor="middle">{esc(x_label)}</text>')
    parts.append(f'<text class="axis-label" transform="translate(11 {TOP + plot_h / 2:.1f}) rotate(-90)"'
                 f' text-anchor="middle">{esc(y_label)}</text>')
    return parts


def stacked_bars(chart_id: str, title: str, days: list[str], series: dict[str, list[int]],
                 y_label: str = "new opt-outs", x_label: str = "day (UTC)") -> str:
    """A stacked bar per day, one colour per series, with its legend; an empty chart says so."""
    shown = top_series(series)
    totals = [sum(values[i] for _name, values, _colour in shown) for i in range(len(days))]
    y_max = nice_ceiling(max(totals, default=0))
    parts = _frame(chart_id, title, y_max, y_label, x_label, compact)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.8)
    for i, day in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = TOP + plot_h
        for name, values, colour in shown:
            value = values[i]
            if not value:
                continue
            height = plot_h * value / y_max
            base -= height
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{height:.1f}"'
                         f' fill="{colour}" data-day="{esc(day)}" data-series="{esc(name)}" data-value="{value}">'
                         f'<title>{esc(day)}: {esc(name)} {value:,}</title></rect>')
        if i % 5 == 4 or i == 0:  # a date every few bars: 30 would not fit on a phone
            parts.append(f'<text class="tick" x="{x + bar_w / 2:.1f}" y="{TOP + plot_h + 13}"'
                         f' text-anchor="middle">{esc(day[5:])}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    if not any(totals):
        parts.append(f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}"'
                     f' text-anchor="middle">no new opt-outs in these days</text>')
    parts.append("</svg>")
    return "".join(parts) + legend([(name, colour) for name, _values, colour in shown], chart_id)


def line_chart(chart_id: str, title: str, series: dict[str, list[tuple[float, float]]], start: float,
               end: float, y_label: str, y_text: Callable[[float], str], x_label: str = "hours ago",
               y_floor: float = 4, y_steps: tuple[float, ...] = COUNT_STEPS) -> str:
    """One line per series over [start, end] (Unix times), the newest point marked, with its legend.

    x ticks are hours before `end`; a series of one point shows as its mark alone. The y axis
    reaches at least `y_floor`, in round steps from `y_steps` (see nice_ceiling).
    """
    values = [value for points in series.values() for _at, value in points]
    y_max = nice_ceiling(max(values, default=0), y_floor, y_steps)
    parts = _frame(chart_id, title, y_max, y_label, x_label, y_text)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(1.0, end - start)

    def xy(at: float, value: float) -> tuple[float, float]:
        return (LEFT + plot_w * min(1.0, max(0.0, (at - start) / span)),
                TOP + plot_h - plot_h * value / y_max)

    hours = span / 3600
    step = 6 if hours >= 12 else max(1, round(hours / 4))
    for ago in range(0, int(hours) + 1, step):
        x = LEFT + plot_w * (1 - ago * 3600 / span)
        anchor = "end" if ago == 0 else "middle"  # "now" ends at the right edge, inside the picture
        parts.append(f'<text class="tick" x="{x:.1f}" y="{TOP + plot_h + 13}" text-anchor="{anchor}">'
                     f'{"now" if ago == 0 else f"-{ago}h"}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    items = []
    for n, (name, points) in enumerate(sorted(series.items())):
        colour = PALETTE[n % len(PALETTE)]
        items.append((name, colour))
        if not points:
            continue
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(at, value) for at, value in points))
        last_at, last_value = points[-1]
        x, y = xy(last_at, last_value)
        parts.append(f'<g class="series" data-series="{esc(name)}" data-points="{len(points)}"'
                     f' data-last="{last_value:g}">'
                     f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
                     f'<title>{esc(name)}</title></polyline>'
                     f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                     f'<title>{esc(name)}: {esc(y_text(last_value))} now</title></circle></g>')
    if not values:
        parts.append(f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}"'
                     f' text-anchor="middle">no samples yet</text>')
    parts.append("</svg>")
    return "".join(parts) + legend(items, chart_id)

"""The status page at / rendered by headless Chromium (Debian's `chromium` package) from the real daemon.

The test asserts on the DOM Chromium built and saves a screenshot to
test-artifacts/status-page.png for a person (or CI) to look at.
"""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from state.store import Store

from .conftest import write_settings
from .process import Daemon, wait_for
from .test_e2e_daemon import drop
from .test_server import answers, fetch, free_port
from .test_status_pictures import add_suppressed

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Names with markup and an address in them: the page must show both as text, the address masked.
BLOCKED = "<b>jane@example.com"  # no "/": it names a file


def chromium() -> str:
    """The Chromium executable; fails with how to install it (the test is not skipped)."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed for the status page test but none was found on PATH "
                f"(looked for {', '.join(CHROMIUM_NAMES)}). On Debian/Ubuntu: "
                "sudo apt-get update && sudo apt-get install -y chromium", pytrace=False)


def headless(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run Chromium headless once on `url` with the flags that keep it offline and quiet."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1200,800"]
    result = subprocess.run([chromium(), *flags, *extra, url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


class _Table(HTMLParser):
    """The column headings, each row's cell texts by row id, and every element name seen."""

    def __init__(self):
        super().__init__()
        self.headings: list[str] = []
        self.rows: dict[str, list[str]] = {}
        self.tags: set[str] = set()
        self._cells: list[str] | None = None
        self._heading = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "tr" and dict(attrs).get("id"):
            self._cells = self.rows.setdefault(dict(attrs)["id"], [])
        elif tag == "td" and self._cells is not None:
            self._cells.append("")
        elif tag == "th":
            self._heading = True
            self.headings.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._cells = None
        elif tag == "th":
            self._heading = False

    def handle_data(self, data):
        if self._heading:
            self.headings[-1] += data
        elif self._cells:
            self._cells[-1] += data

    def row(self, row_id: str) -> dict[str, str]:
        """One row as {heading: text with whitespace collapsed}."""
        return {heading: " ".join(cell.split()) for heading, cell in zip(self.headings, self.rows[row_id])}


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_the_status_page_shows_each_adapter_with_pause_failure_and_lag_in_chromium(tmp_path):
    chromium()  # fail first, and clearly, without Chromium
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    (tmp_path / BLOCKED).write_text("a file where the sink's folder should be\n")
    settings = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.1,
         "max_new_per_cycle": 2},
        {"name": "orders", "type": "csv_folder", "path": "orders", "interval": 1, "settle_seconds": 0.1},
        {"name": "sink", "type": "csv_file", "path": f"{BLOCKED}/suppressions.csv", "interval": 1},
    ], store={"path": "data/store.db"}, server={"listen": f"127.0.0.1:{port}", "max_lag": "1s"})
    with Daemon(settings) as daemon:
        wait_for(lambda: answers(url + "healthz") == 200)
        drop(tmp_path / "inbox", "big.csv", ["a1@example.com,,", "a2@example.com,,", "a3@example.com,,"])
        drop(tmp_path / "orders", "one.csv", ["ann@example.com,,"])
        wait_for(lambda: " guard_paused adapter=inbox staged=3" in daemon.log())
        wait_for(lambda: " lag_alarm adapter=sink" in daemon.log())

        dom = headless(url, tmp_path / "profile-dom", "--dump-dom").stdout
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "status-page.png"
        screenshot.unlink(missing_ok=True)
        headless(url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
        assert daemon.terminate() == 0

    table = _Table()
    table.feed(dom)
    assert {row for row in table.rows if row.startswith("adapter-")} == {"adapter-inbox", "adapter-orders",
                                                                         "adapter-sink"}
    inbox, orders, sink = (table.row(f"adapter-{name}") for name in ("inbox", "orders", "sink"))
    assert (inbox["Adapter"], inbox["Type"], inbox["Role"]) == ("inbox", "csv_folder", "read")
    assert inbox["State"] == "PAUSED with 3 staged; approve with optout-sync approve inbox --count 3"
    assert orders["State"] == "active" and orders["Failures"] == "0"
    assert sink["State"] == "FAILING" and sink["Pending"] == "1"
    assert sink["Lag"].startswith("LAG ALARM") and sink["Lag"].endswith("(max 1s)")
    # The error names the blocking file: shown as text (markup escaped), its address masked.
    assert sink["Last error"].startswith("[Errno 17] File exists:")
    assert sink["Last error"].endswith("<b>j***@example.com'")
    assert "b" not in table.tags, "markup from an error message was rendered as HTML"
    assert "script" not in table.tags
    assert not any(local in dom for local in ("jane@", "ann@", "a1@", "a2@", "a3@")), "an address is shown"

    assert png_size(screenshot) == (1200, 800)
    assert screenshot.stat().st_size > 10_000, "the screenshot looks blank"


# -- the pictures, at a desktop and a phone width ---------------------------------------------------

WIDTHS = (1280, 390)
# Headless Chromium lays a window out at least 500 px wide whatever --window-size says (a 390 px
# screenshot of the page itself is the left of a 500 px layout), so the page is framed: an iframe
# is laid out at exactly its width.
_MEASURE = ("<script>parent.document.body.setAttribute('data-measured', document.documentElement.scrollWidth"
            " + 'x' + document.documentElement.scrollHeight)</script></body>")


def still(page: str) -> str:
    """The served markup without its self-reload (a frame must not reload while Chromium reads it)."""
    return page.replace('<meta http-equiv="refresh"', '<meta data-refresh')


def framed(width: int, height: int, tmp_path: Path, srcdoc: str) -> str:
    """A file:// URL of a page holding `srcdoc` in one borderless iframe of `width` x `height` px at its top left."""
    wrapper = tmp_path / f"frame-{width}-{len(srcdoc)}.html"
    wrapper.write_text(f'<!doctype html><html><body style="margin:0"><iframe srcdoc="{html.escape(srcdoc)}" '
                       f'width="{width}" height="{height}" style="border:0;display:block"></iframe></body></html>')
    return wrapper.as_uri()


def measured(page: str, width: int, tmp_path: Path) -> tuple[int, int]:
    """The page's laid-out (scroll width, scroll height) at `width` px, in Chromium.

    The page itself runs no script: the test lays out the very markup served, with one line
    added that writes the sizes into the frame's parent, and reads them from --dump-dom.
    """
    copy = still(page).replace("</body>", _MEASURE)
    dom = headless(framed(width, 900, tmp_path, copy), tmp_path / f"profile-measure-{width}",
                   "--window-size=1300,900", "--dump-dom").stdout
    found = re.search(r'data-measured="(\d+)x(\d+)"', dom)
    assert found, "the measuring line did not run"
    return int(found[1]), int(found[2])


def test_the_status_page_pictures_in_chromium_at_1280_and_390_px(tmp_path):
    chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    settings = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.1},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": 1},
    ], store={"path": "data/store.db"}, server={"listen": f"127.0.0.1:{port}"})
    now = datetime.now(timezone.utc)
    days = [(now - timedelta(days=ago)).date().isoformat() for ago in range(29, -1, -1)]
    with Store(tmp_path / "data" / "store.db") as store:
        # Three weeks of opt-outs from two sources and an import whose name holds markup and an address.
        rows = [(now - timedelta(days=ago, minutes=5), reason, source)
                for ago in range(1, 22) for reason, source, every in
                [("unsubscribed", "inbox", 1), ("spam_complaint", "inbox", 3), ("hard_bounce", BLOCKED, 2)]
                for _ in range(ago % 4 + 1) if ago % every == 0]
        add_suppressed(store, rows)
        with store.transaction():
            store.conn.execute(
                "INSERT INTO failures (adapter, kind, location, value, message, first_at, last_at)"
                " VALUES ('inbox', 'rejected', 'inbox/old.csv:7', 'jane@@example.com',"
                " 'not an address: ''jane@@example.com'' <b>bold</b>', ?, ?)", (now.isoformat(),) * 2)
    expected = {}
    for moment, reason, _source in rows:
        key = (moment.date().isoformat(), reason)
        expected[key] = expected.get(key, 0) + 1
    with Daemon(settings) as daemon:
        wait_for(lambda: answers(url + "healthz") == 200)
        drop(tmp_path / "inbox", "today.csv", ["ann@example.com,,", "bo.b@example.com,,spam_complaint"])
        wait_for(lambda: (tmp_path / "out" / "suppressions.csv").exists()
                 and "ann@example.com" in (tmp_path / "out" / "suppressions.csv").read_text())
        page = fetch(url)[2]
        dom = headless(url, tmp_path / "profile-dom", "--window-size=1280,900", "--dump-dom").stdout
        ARTIFACTS.mkdir(exist_ok=True)
        shots = {}
        for width in WIDTHS:
            scroll_width, height = measured(page, width, tmp_path)
            assert scroll_width <= width, f"the page overflows horizontally at {width} px ({scroll_width} px)"
            shots[width] = ARTIFACTS / f"status-page-{width}.png"
            shots[width].unlink(missing_ok=True)
            height = min(height, 8000)
            headless(framed(width, height, tmp_path, still(page)), tmp_path / f"profile-{width}",
                     f"--window-size={width},{height}", f"--screenshot={shots[width]}")
        assert daemon.terminate() == 0

    parsed = _Elements()
    parsed.feed(dom)
    parsed.close()
    assert "script" not in parsed.tags and "b" not in parsed.tags, "markup from data was rendered"
    assert not any(local in dom for local in ("jane@", "ann@", "bo.b@", "person")), "an address is shown"
    bars = {(a["data-day"], a["data-series"]): int(a["data-value"]) for tag, a in parsed.elements
            if tag == "rect" and a.get("class") == "bar" and a["data-day"] in days}
    by_reason = {key: value for key, value in bars.items() if key[1] in ("unsubscribed", "spam_complaint",
                                                                        "hard_bounce", "imported")}
    today = days[-1]
    # The drop of today came through the daemon: one opt-out of the default reason, one complaint.
    expected[(today, "imported")] = 1
    expected[(today, "spam_complaint")] = expected.get((today, "spam_complaint"), 0) + 1
    assert by_reason == expected
    assert f"{today}: inbox 2" in parsed.titles
    masked_source = "<b>j***@example.com"
    assert any(title.startswith(f"{days[-3]}: {masked_source} ") for title in parsed.titles)
    assert masked_source in parsed.legends["chart-source"]
    assert parsed.legends["chart-reason"][:1] == ["unsubscribed"]
    # The sink's lag and pending lines, drawn from the monitor's samples; the daemon just started.
    series = {(a["data-series"], a["data-points"]) for tag, a in parsed.elements
              if tag == "g" and a.get("class") == "series"}
    assert {name for name, _ in series} == {"sink"} and all(int(points) >= 1 for _, points in series)
    assert "The daemon started" in parsed.text and "the history covers only that time" in parsed.text
    assert "inbox/old.csv:7: j***@example.com" in parsed.text and "<b>bold</b>" in parsed.text
    events = [a["id"] for tag, a in parsed.elements if tag == "tr" and a.get("id", "").startswith("event-")]
    assert len(events) == 50 and events == sorted(events, key=lambda e: -int(e.split("-")[1]))
    for width, shot in shots.items():
        assert png_size(shot)[0] == width
        assert shot.stat().st_size > 20_000, f"the {width} px screenshot looks blank"


class _Elements(HTMLParser):
    """Every element (tag, attributes), <title> texts, each legend's labels, and the text, collapsed."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.tags: set[str] = set()
        self.titles: list[str] = []
        self.legends: dict[str, list[str]] = {}
        self.text = ""
        self._title = self._legend = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        self.tags.add(tag)
        if tag == "title":
            self.titles.append("")
            self._title = True
        elif tag == "ul" and attrs.get("class") == "legend":
            self._legend = self.legends.setdefault(attrs["id"].removesuffix("-legend"), [])
        elif tag == "li" and self._legend is not None:
            self._legend.append("")

    def handle_endtag(self, tag):
        if tag == "title":
            self._title = None
        elif tag == "ul":
            self._legend = None

    def handle_data(self, data):
        self.text += data
        if self._title:
            self.titles[-1] += data
        if self._legend:
            self._legend[-1] += data

    def close(self):
        super().close()
        self.text = " ".join(self.text.split())

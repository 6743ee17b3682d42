"""The status page at / rendered by headless Chromium (Debian's `chromium` package) from the real daemon.

The test asserts on the DOM Chromium built and saves a screenshot to
test-artifacts/status-page.png for a person (or CI) to look at.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from .conftest import write_settings
from .process import Daemon, wait_for
from .test_e2e_daemon import drop
from .test_server import answers, free_port

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
    assert set(table.rows) == {"adapter-inbox", "adapter-orders", "adapter-sink"}
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

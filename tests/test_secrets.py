"""A known API token never reaches any output, log, served page or the store.

The token is given only through the environment to a real `hubspot` adapter
that talks to the project's HubSpot fake over a socket. The fake first answers
like HubSpot (refusing one address), then refuses every call with a 401 whose
body quotes the credential back, as some vendors do. Every CLI command's
output, the daemon's log and log file, its HTTP pages and every byte of every
file the run leaves behind are searched.
"""

from __future__ import annotations

import uuid

import pytest

from .conftest import write_settings
from .fakes.hubspot import FakeHubSpot
from .fakes.serve import serve
from .process import Daemon, run_cli, wait_for
from .test_e2e_daemon import drop
from .test_server import answers, fetch, free_port

pytestmark = pytest.mark.e2e

SECRET_PART = uuid.uuid4().hex
TOKEN = f"pat-na1-{SECRET_PART}"
REFUSED = "refused@example.com"


@pytest.fixture
def hubspot():
    fake = FakeHubSpot(TOKEN, invalid_addresses={REFUSED})
    with serve(fake.handle) as url:
        fake.url = url
        yield fake


def test_a_known_token_appears_in_no_output_log_page_or_store_file(tmp_path, hubspot):
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    settings = write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.1},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": 1},
        {"name": "crm", "type": "hubspot", "base_url": hubspot.url, "interval": 1, "initial_lookback": "1h",
         "max_attempts": 1, "retry_budget": "1s", "connect_timeout": 2, "read_timeout": 2,
         "rate_limit_requests": 10_000},
    ], store={"path": "data/store.db"}, server={"listen": f"127.0.0.1:{port}"},
        logging={"file": "logs/optout-sync.log", "level": "debug"})
    env = {"OPTOUT_SYNC_ADAPTERS__CRM__TOKEN": TOKEN}  # the token is in no file
    config = ["--config", str(settings)]
    outputs: dict[str, str] = {}

    def cli(label: str, *args: str, expect: int) -> None:
        result = run_cli(*config, *args, env=env)
        outputs[f"{label} stdout"], outputs[f"{label} stderr"] = result.stdout, result.stderr
        assert result.returncode == expect, f"{label}: exit {result.returncode}\n{result.stderr}"

    drop(tmp_path / "inbox", "list.csv", ["ann@example.com,,", f"{REFUSED},,", "no-at-sign,,"])
    cli("check", "check", expect=0)
    cli("sync", "sync", "--once", "--json", expect=0)
    cli("failures", "--show-addresses", "failures", expect=0)
    cli("status", "status", "--json", expect=0)
    cli("status human", "status", expect=0)
    assert hubspot.opted_out_of_all("ann@example.com")
    refusal = [line for line in outputs["failures stdout"].splitlines() if "  crm  " in line]
    assert len(refusal) == 1 and f"Invalid email address: {REFUSED}" in refusal[0]  # the vendor's own words

    # Quoting the credential back is the leak the daemon must scrub.
    hubspot.fail(401, times=1_000_000, category="INVALID_AUTHENTICATION",
                 message=f"Authentication credentials not valid: Bearer {TOKEN}")
    cli("check broken", "check", expect=1)
    cli("sync broken", "--log-format", "json", "--show-addresses", "sync", "--once", expect=1)

    with Daemon(settings, "--log-format", "json", "--show-addresses", env=env) as daemon:
        wait_for(lambda: answers(base + "healthz") == 200)
        drop(tmp_path / "inbox", "more.csv", ["bob@example.com,,"])
        wait_for(lambda: '"event": "push", "adapter": "crm"' in daemon.log()
                 and '"error_class": "VendorPermanentError"' in daemon.log())
        for page in ("", "metrics", "healthz", "readyz"):
            outputs[f"GET /{page}"] = fetch(base + page)[2]
        assert daemon.terminate() == 0
    outputs["daemon log"] = daemon.log()

    # The token was really in play: every call carried it (the fake answers 401 to any other), and the 401s
    # quoted it back.
    assert hubspot.requests and {r.headers["authorization"] for r in hubspot.requests} == {f"Bearer {TOKEN}"}
    assert "Authentication credentials not valid: Bearer ***" in outputs["sync broken stderr"]
    assert "Bearer ***" in outputs["daemon log"]

    leaks = [label for label, text in outputs.items() if SECRET_PART in text]
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {p.name for p in files} >= {"settings.toml", "store.db", "optout-sync.log", "suppressions.csv"}
    leaks += [str(path.relative_to(tmp_path)) for path in files if SECRET_PART.encode() in path.read_bytes()]
    assert leaks == [], f"the token appears in: {leaks}"

"""The daemon's HTTP server, metrics, health checks and lag alarm, scraped from the real process.

Also the [server] settings' validation and the shipped service files (systemd
unit, Dockerfile), which are checked for the settings that matter.
"""

from __future__ import annotations

import configparser
import http.client
import json
import shlex
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.metrics import Metrics
from connector.settings import STALE_FLOOR, validate_settings
from state.errors import ConfigError

from .conftest import write_settings
from .process import Daemon, run_cli, wait_for
from .test_e2e_daemon import drop

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nobody listens on now: bind port 0, read what the kernel chose, release it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; 4xx/5xx answers are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def answers(url: str) -> int | None:
    """The status code at `url`, or None while nothing listens there."""
    try:
        return fetch(url)[0]
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        return None  # nothing listens, or the daemon exited while it answered (IncompleteRead)


def scrape(base: str) -> dict[tuple[str, str], float]:
    """Every sample of /metrics as {(sample name, adapter label): value}."""
    status, content_type, body = fetch(base + "metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {(sample.name, sample.labels.get("adapter", "")): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples
            if "phase" not in sample.labels and "le" not in sample.labels}


def served_settings(tmp_path: Path, port: int, sink_path: str = "out/suppressions.csv", **server) -> Path:
    return write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": 1, "settle_seconds": 0.1},
        {"name": "sink", "type": "csv_file", "path": sink_path, "interval": 1},
    ], store={"path": "data/store.db"}, server={"listen": f"127.0.0.1:{port}", **server})


@pytest.mark.e2e
def test_metrics_follow_an_optout_through_the_real_process_and_health_is_200(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    settings = served_settings(tmp_path, port)
    with Daemon(settings, "--log-format", "json") as daemon:
        wait_for(lambda: answers(base + "healthz") == 200)
        wait_for(lambda: answers(base + "readyz") == 200)
        before = scrape(base)
        assert before[("optout_sync_pushed_total", "sink")] == 0
        assert before[("optout_sync_http_retries_total", "sink")] == 0
        dropped_at = time.time()

        drop(tmp_path / "inbox", "list.csv", ["ann@example.com,,", "bob@example.com,,", "not-an-address,,"])
        expected = {("optout_sync_pulled_total", "inbox"): 2, ("optout_sync_rejected_total", "inbox"): 1,
                    ("optout_sync_pushed_total", "sink"): 2, ("optout_sync_apply_latency_seconds_count", "sink"): 2,
                    ("optout_sync_pending_events", "sink"): 0, ("optout_sync_oldest_unapplied_age_seconds", "sink"): 0,
                    ("optout_sync_open_failures", "inbox"): 1, ("optout_sync_lag_alarm", "sink"): 0}

        def settled() -> bool:
            # Counters move with each cycle's report, gauges with the monitor's next look: wait for both.
            now = scrape(base)
            return (expected.items() <= now.items()
                    and now[("optout_sync_last_success_timestamp_seconds", "sink")] >= dropped_at)

        wait_for(settled)
        after = scrape(base)
        # The CSV gives no time, so latency runs from storing to applying: two file hops, well under 5 s each.
        assert 0 <= after[("optout_sync_apply_latency_seconds_sum", "sink")] < 10

        code, content_type, body = fetch(base + "healthz")
        assert (code, content_type, json.loads(body)) == (200, "application/json", {"status": "ok"})
        code, _, body = fetch(base + "readyz")
        assert code == 200 and set(json.loads(body)["detail"]) == {"inbox", "sink"}
        assert fetch(base + "nowhere")[0] == 404
        assert daemon.terminate() == 0
    assert answers(base + "healthz") is None, "the server kept listening after the daemon stopped"
    events = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    # A new store is announced first (store_created), then the server.
    assert [e["event"] for e in events[:2]] == ["store_created", "server_listening"]
    assert {"event": "server_listening", "url": base}.items() <= events[1].items()
    pulled = next(e for e in events if e["event"] == "cycle" and e["adapter"] == "inbox" and e["pulled"])
    assert {"adapter", "phase", "pulled", "pushed", "failed", "duration_ms", "cursor_age_s", "error_class",
            "error"} <= set(pulled)
    assert pulled["pulled"] == 2 and 0 <= pulled["cursor_age_s"] < 5 and pulled["error_class"] is None


@pytest.mark.e2e
def test_a_failing_sink_makes_readyz_503_and_raises_the_lag_alarm_once_per_max_lag(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    settings = served_settings(tmp_path, port, sink_path="blocked/suppressions.csv", stale_after="1.5s",
                               max_lag="2s")
    with Daemon(settings) as daemon:
        wait_for(lambda: answers(base + "readyz") == 200)  # nothing to push yet: the sink succeeds
        wait_for(lambda: (tmp_path / "blocked" / "suppressions.csv").exists())
        shutil.rmtree(tmp_path / "blocked")
        (tmp_path / "blocked").write_text("a file where the sink's folder should be\n")

        drop(tmp_path / "inbox", "list.csv", ["ann@example.com,,"])
        wait_for(lambda: answers(base + "readyz") == 503)
        code, content_type, body = fetch(base + "readyz")
        reason = json.loads(body)
        assert content_type == "application/json" and reason["adapters"] == ["sink"]
        assert "sink (last success" in reason["reason"] and "inbox" not in reason["reason"]
        assert fetch(base + "healthz")[0] == 200  # the process and the store are fine

        wait_for(lambda: " lag_alarm adapter=sink" in daemon.log(), timeout=10)
        time.sleep(1.0)  # half of max_lag: the alarm must not repeat yet
        assert daemon.log().count(" lag_alarm adapter=sink") == 1
        assert " lag_alarm adapter=inbox" not in daemon.log()
        metrics = scrape(base)
        assert metrics[("optout_sync_lag_alarm", "sink")] == 1
        assert metrics[("optout_sync_pending_events", "sink")] == 1
        assert metrics[("optout_sync_oldest_unapplied_age_seconds", "sink")] > 2
        status = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
        alarms = {row["adapter"]: row["lag_alarm"] for row in status["adapters"]}
        assert alarms == {"inbox": False, "sink": True} and status["max_lag_s"] == 2

        # Repaired: a new opt-out wakes the backed-off sink, which applies both.
        (tmp_path / "blocked").unlink()
        drop(tmp_path / "inbox", "more.csv", ["bob@example.com,,"])
        wait_for(lambda: scrape(base)[("optout_sync_pushed_total", "sink")] == 2)
        wait_for(lambda: " lag_cleared adapter=sink" in daemon.log())
        wait_for(lambda: answers(base + "readyz") == 200)
        assert scrape(base)[("optout_sync_lag_alarm", "sink")] == 0
        assert daemon.terminate() == 0
    cycle_errors = [line for line in daemon.log().splitlines() if " cycle adapter=sink" in line and "ERROR" in line]
    assert cycle_errors and "error_class=FileExistsError" in cycle_errors[0]


@pytest.mark.e2e
def test_health_and_readiness_are_503_once_the_store_is_gone_and_the_daemon_exits_1(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    settings = served_settings(tmp_path, port, max_lag="4s")  # the monitor refreshes every second
    with Daemon(settings) as daemon:
        wait_for(lambda: answers(base + "healthz") == 200)
        wait_for(lambda: all(scrape(base)[("optout_sync_last_success_timestamp_seconds", name)] > 0
                             for name in ("inbox", "sink")))
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / "data" / f"store.db{suffix}").unlink(missing_ok=True)
        seen = []  # until the daemon stops serving and exits, nothing may say healthy or ready
        while daemon.proc.poll() is None:
            seen += [(path, answers(base + path)) for path in ("healthz", "readyz")]
        assert daemon.proc.wait(10) == 1
        assert seen and all(code in (503, None) for _, code in seen), seen
        assert ("readyz", 503) in seen and ("healthz", 503) in seen
    assert daemon.log().count("store_lost") == 1


@pytest.mark.e2e
def test_a_taken_port_stops_the_start_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = served_settings(tmp_path, port)
        result = run_cli("--config", str(settings), "run", timeout=20)
    assert result.returncode == 2
    assert f"[server] listen = '127.0.0.1:{port}': cannot listen there" in result.stderr


def test_server_settings_default_off_and_are_validated(tmp_path):
    source = tmp_path / "settings.toml"
    server = validate_settings({}, source).server
    assert (server.listen, server.stale_after, server.max_lag) == (None, None, 3600.0)
    assert server.stale_limit(60) == STALE_FLOOR and server.stale_limit(3600) == 3 * 3600
    given = validate_settings({"server": {"listen": "[::1]:9464", "stale_after": "90s", "max_lag": "2h"}},
                              source).server
    assert (given.listen, given.stale_limit(3600), given.max_lag) == ("[::1]:9464", 90.0, 7200.0)
    for bad, message in [({"listen": "9464"}, "key 'server.listen': expected 'host:port'"),
                         ({"listen": "localhost:70000"}, "key 'server.listen': expected 'host:port'"),
                         ({"max_lag": 0}, "key 'server.max_lag': must be a positive duration"),
                         ({"stale_after": "soon"}, "key 'server.stale_after': expected a duration"),
                         ({"port": 9464}, "key 'server.port': unknown key")]:
        with pytest.raises(ConfigError) as caught:
            validate_settings({"server": bad}, source)
        assert str(caught.value).startswith(f"{source}: invalid settings") and message in str(caught.value)


def test_each_metrics_object_has_its_own_registry_and_http_counters():
    first, second = Metrics(["crm"]), Metrics(["crm"])  # the global registry would refuse the second
    first.count_http_retry("crm")
    first.count_http_retry("crm")
    first.count_rate_limited("crm")
    body, content_type = first.render()
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'optout_sync_http_retries_total{adapter="crm"} 2.0' in text
    assert 'optout_sync_http_rate_limited_total{adapter="crm"} 1.0' in text
    assert 'optout_sync_http_retries_total{adapter="crm"} 0.0' in second.render()[0].decode()
    openmetrics, content_type = first.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and openmetrics.endswith(b"# EOF\n")


def test_the_systemd_unit_runs_unprivileged_hardened_and_restarts_on_failure():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(REPO / "contrib" / "optout-sync.service")
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["User"] and service["User"] != "root"
    command = shlex.split(service["ExecStart"])
    assert command[0].endswith("optout-sync") and command[-1] == "run" and "--config" in command
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("PrivateDevices", "yes")]:
        assert service[key] == value, key
    assert service["StateDirectory"] == "optout-sync"
    assert "/var/lib/optout-sync" in service["ReadWritePaths"].split()
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_dockerfile_runs_as_a_non_root_user_with_a_volume_for_the_store():
    instructions = []
    for line in (REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    keys = [keyword for keyword, _ in instructions]
    assert instructions[0][0] == "FROM" and "python:" in instructions[0][1] and "slim" in instructions[0][1]
    user = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user and user[-1] not in ("root", "0") and keys.index("USER") < keys.index("ENTRYPOINT")
    volumes = [rest for keyword, rest in instructions if keyword == "VOLUME"]
    assert volumes and "/data" in volumes[0]
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    command = json.loads(dict(instructions)["CMD"])
    assert entrypoint == ["optout-sync"] and command[-1] == "run" and "--config" in command
    assert "HEALTHCHECK" in keys and "/healthz" in dict(instructions)["HEALTHCHECK"]

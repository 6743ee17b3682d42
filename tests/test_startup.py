"""Guards for the fast paths: a lean command start-up and the chunked CSV export."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from adapters import registry
from connector import operator
from connector.settings import validate_settings
from state.store import Store

ROOT = Path(__file__).resolve().parent.parent
# Modules only some commands or some adapter types need; none may load at start-up.
HEAVY = ["adapters.ses", "adapters.hubspot", "adapters.sendgrid", "adapters.mailchimp", "adapters.mailgun",
         "adapters.postmark", "adapters.klaviyo", "adapters.kit", "adapters.http", "botocore", "httpx",
         "prometheus_client", "connector.daemon", "connector.server", "connector.metrics", "receiver.app",
         "receiver.hooks", "starlette", "uvicorn", "cryptography", "psycopg"]


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout)


def test_importing_the_cli_loads_no_adapter_or_daemon_module():
    assert loaded_after("import connector.cli") == []


def test_settings_with_file_adapters_load_no_network_adapter(tmp_path):
    settings = tmp_path / "settings.toml"
    settings.write_text('[store]\npath = "store.db"\n'
                        '[[adapters]]\nname = "inbox"\ntype = "csv_folder"\npath = "inbox"\n'
                        '[[adapters]]\nname = "sink"\ntype = "csv_file"\npath = "sink.csv"\n')
    code = ("from adapters import registry\nfrom connector.settings import load_settings\n"
            f"load_settings({str(settings)!r}, environ={{}})\n"
            "assert 'ses' in registry.ADAPTER_TYPES and sorted(registry.ADAPTER_TYPES)")
    assert loaded_after(code) == []


def test_registry_resolves_a_type_on_first_lookup_and_keeps_registered_classes():
    class Custom:
        settings_model = object

    registry.register("custom_for_test", Custom)
    try:
        assert registry.ADAPTER_TYPES["custom_for_test"] is Custom
        assert registry.settings_model("custom_for_test") is object
        assert registry.ADAPTER_TYPES["csv_file"].__name__ == "CsvFileAdapter"
        assert "csv_file" in registry.ADAPTER_TYPES and "nope" not in registry.ADAPTER_TYPES
    finally:
        del registry.ADAPTER_TYPES["custom_for_test"]
    try:
        registry.settings_model("nope")
    except KeyError as exc:
        assert exc.args == ("nope",)
    else:
        raise AssertionError("an unknown type must raise KeyError")


def test_export_writes_exactly_what_csv_writer_writes(tmp_path, monkeypatch):
    settings = validate_settings({"store": {"path": "store.db"}}, tmp_path / "settings.toml")
    odd = ["a,b", 'say "hi"', "two\nlines", "cr\ronly", "", None, b"blob"]
    with Store(settings.store.path) as store:
        for seq in range(40):
            # Every fourth row has one odd cell, so some chunks take the fast path and some do not.
            value = odd[(seq // 4) % len(odd)] if seq % 4 == 0 else "2026-01-01T00:00:00+00:00"
            store.conn.execute(
                "INSERT INTO suppressions (address, scope, reason, origin, source, occurred_at, recorded_at, seq)"
                " VALUES (?, '*', 'manual', 'user', ?, ?, '2026-01-01T00:00:00+00:00', ?)",
                (f"a{seq:02d}@x.io", "import" if seq % 8 else value if value is not None else "x", value, seq))
        expected = io.StringIO()
        writer = csv.writer(expected, lineterminator="\n")
        writer.writerow(operator.EXPORT_HEADER)
        writer.writerows(store.conn.execute("SELECT address, scope, reason, origin, source, occurred_at, ''"
                                            " FROM suppressions ORDER BY address, scope"))
    for chunk in (1, 3, 1000):
        monkeypatch.setattr(operator, "_EXPORT_CHUNK", chunk)
        out = io.StringIO()
        assert operator.export(settings, out) == 40
        assert out.getvalue() == expected.getvalue()


def test_pydantic_settings_loads_only_with_the_settings():
    # Only a command that reads settings pays for pydantic-settings; --help and --version do not.
    probe = "import connector.cli, sys\nprint('pydantic_settings' in sys.modules, 'connector.settings' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.split() == ["False", "False"]

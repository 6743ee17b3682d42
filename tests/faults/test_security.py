"""Security: secrets reach no output, log, page or file; the store is private; TLS stays on; nothing runs data.

A known secret is given (through the environment) to one adapter of every HTTP type; every command runs
while the vendor fakes answer normally, then 401 and 500 with bodies that quote the credential back, and
everything the runs leave behind is searched for it. Then file modes, TLS settings, and a scan of the
source for code that could execute data or build SQL from it.
"""

from __future__ import annotations

import ast
import base64
import re
import ssl
import stat
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from adapters import registry
from adapters.http import HttpAdapterSettings, VendorPermanentError, check_base_url
from connector.cli import main
from connector.settings import load_settings
from connector.store_guard import check_store_location
from state.errors import StoreError
from state.store import Store
from tests.conftest import write_settings
from tests.fakes.serve import serve
from tests.process import Daemon, wait_for

from .figures import report
from .helpers import one, set_handler
from .vendors import KITS, TOPICS

ROOT = Path(__file__).resolve().parents[2]
SOURCE = [ROOT / "connector", ROOT / "adapters", ROOT / "state", ROOT / "receiver"]
# The secret field of each adapter type, and the name of its instance here.
SECRET_FIELDS = {"hubspot": "token", "sendgrid": "api_key", "mailgun": "api_key", "postmark": "server_token",
                 "mailchimp": "api_key", "ses": "secret_access_key", "klaviyo": "api_key"}


class Vendors:
    """Every kit's fake served on 127.0.0.1, switchable to answer 401 or 500 quoting the credential back."""

    def __init__(self, stack: ExitStack):
        self.mode = "ok"
        self.fakes = {}
        self.urls = {}
        self.credentials: set[str] = set()
        for kit in KITS.values():
            fake = kit.make_fake(time.time, secret_of(kit.type))
            self.fakes[kit.type] = fake
            self.urls[kit.type] = stack.enter_context(serve(self._handler(fake.handle)))

    def _handler(self, inner):
        def handle(request: httpx.Request) -> httpx.Response:
            sent = [v for k, v in request.headers.items() if k.lower() in ("authorization", "x-postmark-server-token")]
            self.credentials.update(sent)
            if self.mode == "ok":
                return inner(request)
            status = 401 if self.mode == "401" else 500
            # Some vendors quote the credential they refused: the daemon must scrub it.
            text = f"refused credentials {' / '.join(sent)}"
            return httpx.Response(status, json={"message": text, "Message": text, "detail": text, "title": text,
                                                "errors": [{"message": text, "field": None}], "ErrorCode": 10},
                                  headers={"x-amzn-ErrorType": "UnrecognizedClientException:"})
        return handle


MARK = uuid.uuid4().hex[:12]


def secret_of(kit_type: str) -> str:
    """A secret unique to this run, in the form the vendor expects."""
    if kit_type == "mailchimp":
        return f"{MARK}mc0123456789abcdef0123-us21"
    if kit_type == "ses":
        return f"{MARK}sesSECRETabcdefghijklmnopqrstuv"
    return f"{kit_type}-{MARK}-secret-0123456789"


def settings_for(tmp_path: Path, vendors: Vendors) -> Path:
    adapters = [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "settle_seconds": 0, "interval": 1},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": 1},
    ]
    for kit in KITS.values():
        raw = kit.settings(kit.type, vendors.urls[kit.type] + ("/3.0" if kit.type == "mailchimp" else ""),
                           secret_of(kit.type))
        raw.pop(SECRET_FIELDS[kit.type])  # given through the environment only
        adapters.append({**{k: v for k, v in raw.items() if v is not None}, "interval": 1, "max_attempts": 1,
                         "retry_budget": "1s", "connect_timeout": 2, "read_timeout": 2, "rate_limit_requests": 10_000})
    path = write_settings(tmp_path, adapters, topics=TOPICS, store={"path": "data/store.db"},
                          logging={"file": "logs/optout-sync.log", "level": "debug"})
    path.chmod(0o600)
    return path


def environment() -> dict[str, str]:
    return {f"OPTOUT_SYNC_ADAPTERS__{kit_type.upper()}__{field.upper()}": secret_of(kit_type)
            for kit_type, field in SECRET_FIELDS.items()}


COMMANDS = [
    ("check",), ("sync", "--once"), ("sync", "--once", "--dry-run", "--json"), ("status",), ("status", "--json"),
    ("failures",), ("failures", "--json"), ("history", "ann@example.com"), ("export",),
    ("import", "{import}"), ("import", "{import}", "--confirm", "99"),
    *[("reconcile", kit_type) for kit_type in KITS], ("approve", "hubspot", "--count", "1"),
    ("lift", "ann@example.com", "--scope", "*", "--legal-basis", "CONSENT_WITH_NOTICE", "--explanation", "asked",
     "--propagate"),
    ("cleanup", "hubspot", "--reason", "hard_bounce"),
]


def test_a_known_secret_of_every_http_adapter_appears_nowhere(tmp_path):
    outputs: dict[str, str] = {}
    codes: dict[str, set[int]] = {}
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "list.csv").write_text("email\nann@example.com\nbob@example.com\nbroken\n")
    (tmp_path / "import.csv").write_text("email\ncarol@example.com\n")
    with ExitStack() as stack:
        vendors = Vendors(stack)
        settings = settings_for(tmp_path, vendors)
        env = environment()
        for mode in ("ok", "401", "500"):
            vendors.mode = mode
            for command in COMMANDS:
                args = [a.replace("{import}", str(tmp_path / "import.csv")) for a in command]
                result = CliRunner().invoke(main, ["--config", str(settings), "--show-addresses", *args], env=env)
                label = f"{mode}: {' '.join(command)}"
                outputs[label] = result.output + (result.stderr if result.stderr_bytes is not None else "")
                codes.setdefault(mode, set()).add(result.exit_code)
                assert isinstance(result.exception, (SystemExit, type(None))), f"{label}: {result.exception!r}"
                assert "Traceback" not in outputs[label], label
        # The daemon too, as a real process, through all three modes.
        vendors.mode = "ok"
        with Daemon(settings, "--log-format", "json", env=env) as daemon:
            wait_for(lambda: '"event": "cycle"' in daemon.log(), timeout=20)
            for mode in ("401", "500"):
                vendors.mode = mode
                wait_for(lambda: '"error_class": "VendorPermanentError"' in daemon.log()
                         or '"error_class": "VendorTransientError"' in daemon.log(), timeout=20)
            assert daemon.terminate() == 0
        outputs["daemon"] = daemon.log()
    secrets = {secret_of(kit_type) for kit_type in KITS} | {MARK}
    # What went over the wire besides: the base64 of Basic credentials, whole and decoded.
    for value in vendors.credentials:
        if value.startswith("Basic "):
            encoded = value.split(" ", 1)[1]
            secrets |= {encoded, base64.b64decode(encoded).decode()}
    leaks = [f"{label}" for label, text in outputs.items() if any(s in text for s in secrets)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaks += [str(p.relative_to(tmp_path)) for p in files if any(s.encode() in p.read_bytes() for s in secrets)]
    report("secrets", [
        f"{len(KITS)} HTTP adapter types ({', '.join(sorted(KITS))}), secrets given only through the environment",
        f"{len(COMMANDS)} commands x 3 vendor modes (ok, 401 and 500 quoting the credential back) + the daemon; "
        f"exit codes seen: " + ", ".join(f"{m} {sorted(c)}" for m, c in codes.items()),
        f"searched: {len(outputs)} outputs (stdout, stderr, status --json, daemon log) and {len(files)} files "
        f"({', '.join(sorted({p.suffix or p.name for p in files}))}) for {len(secrets)} secret forms: "
        f"{len(leaks)} hits",
    ])
    assert vendors.credentials, "no credential was ever sent: the test did not exercise the adapters"
    assert {"store.db", "optout-sync.log", "suppressions.csv"} <= {p.name for p in files}
    assert any("refused credentials" in text for text in outputs.values()), "the leaky 401 was never shown"
    assert leaks == [], f"a secret appears in: {leaks}"


def test_repr_of_settings_and_adapters_hides_every_secret(tmp_path):
    adapters = []
    for kit in KITS.values():
        raw = kit.settings(kit.type, f"https://{kit.type}.vendor.test" + ("/3.0" if kit.type == "mailchimp" else ""),
                           secret_of(kit.type))
        adapters.append({k: v for k, v in raw.items() if v is not None})
    path = write_settings(tmp_path, adapters, topics=TOPICS)
    path.chmod(0o600)
    settings = load_settings(path, environ={})
    texts = [repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json()]
    for config in settings.adapters:
        adapter = registry.build(config, settings.topics)
        texts += [repr(config), str(config), repr(adapter), repr(adapter.http)]
        adapter.close()
    assert all(MARK not in text for text in texts)
    assert all(secret_of(k) in {getattr(a, SECRET_FIELDS[k]).get_secret_value() for a in settings.adapters
                                if a.type == k} for k in KITS)


def test_a_settings_file_holding_a_secret_readable_by_others_warns_at_start(tmp_path):
    kit = KITS["hubspot"]
    path = write_settings(tmp_path, [{k: v for k, v in kit.settings("crm", "https://api.hubapi.com", "pat-x").items()
                                      if v is not None}], topics=TOPICS)
    path.chmod(0o644)
    result = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert "insecure_settings_file" in result.output and f"chmod 600 {path}" in result.output


# -- the store's place on disk ----------------------------------------------------------------------------------


def inbox_settings(folder: Path, store: str = "data/store.db") -> Path:
    (folder / "inbox").mkdir(exist_ok=True)
    return write_settings(folder, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}], store={"path": store})


def test_the_store_and_its_companions_are_created_0600(tmp_path):
    settings = inbox_settings(tmp_path)
    assert CliRunner().invoke(main, ["--config", str(settings), "sync", "--once"]).exit_code == 0
    data = tmp_path / "data"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
    assert modes["store.db"] == 0o600 and all(mode == 0o600 for mode in modes.values()), modes
    assert not stat.S_IMODE(data.stat().st_mode) & stat.S_IWOTH


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_store_folder_every_user_can_write_is_refused(tmp_path, mode):
    """Decided: refuse (exit 1) rather than warn, sticky bit or not; the message says how to fix it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(mode)
    settings = inbox_settings(tmp_path)
    for command in (["sync", "--once"], ["run"]):
        result = CliRunner().invoke(main, ["--config", str(settings), *command])
        assert result.exit_code == 1, (command, result.output)
        assert "is writable by every user" in result.output and "chmod o-w" in result.output
    assert not (tmp_path / "data" / "store.db").exists()
    (tmp_path / "data").chmod(0o700)
    assert CliRunner().invoke(main, ["--config", str(settings), "sync", "--once"]).exit_code == 0
    # A command that only reads the store refuses the open folder too (with no store it says "no store at").
    (tmp_path / "data").chmod(mode)
    result = CliRunner().invoke(main, ["--config", str(settings), "status"])
    assert result.exit_code == 1 and "is writable by every user" in result.output, result.output


def test_a_store_file_open_to_others_is_made_private_with_a_warning(tmp_path):
    settings = inbox_settings(tmp_path)
    Store(tmp_path / "data" / "store.db").close()
    (tmp_path / "data" / "store.db").chmod(0o644)
    result = CliRunner().invoke(main, ["--config", str(settings), "status"])
    assert result.exit_code == 0 and "store_permissions_fixed" in result.output
    assert stat.S_IMODE((tmp_path / "data" / "store.db").stat().st_mode) == 0o600
    assert check_store_location(tmp_path / "data" / "store.db") == []


def test_the_guard_names_the_folder_it_refuses(tmp_path):
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(StoreError, match=re.escape(str(tmp_path))):
            check_store_location(tmp_path / "store.db")
    finally:
        tmp_path.chmod(0o700)


# -- TLS -------------------------------------------------------------------------------------------------------


def https_adapter(kit_type: str):
    kit = KITS[kit_type]
    raw = kit.settings(kit_type, "https://api.example.com" + ("/3.0" if kit_type == "mailchimp" else ""),
                       secret_of(kit_type))
    return kit.build(registry.settings_model(kit_type).model_validate(raw), None, None)


@pytest.mark.parametrize("kit_type", sorted(KITS))
def test_tls_is_verified_and_cannot_be_switched_off(kit_type):
    adapter = https_adapter(kit_type)
    transport = adapter.http._client._transport
    transport = getattr(transport, "inner", transport)  # SES signs in front of the real transport
    context = transport._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    adapter.close()
    model = registry.settings_model(kit_type)
    switches = [name for name in model.model_fields if re.search(r"verify|ssl|tls|insecure|cert", name)]
    assert switches == [], f"{kit_type} has settings that may touch TLS: {switches}"
    with pytest.raises(ValidationError, match="must use https"):
        model.model_validate({**KITS[kit_type].settings(kit_type, "http://api.example.com", "x"),
                              "base_url": "http://api.example.com"})


def test_plain_http_is_accepted_for_loopback_only():
    for url in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"):
        assert check_base_url(url) == url
    for url in ("http://10.0.0.1", "http://127.0.0.1.example.com", "http://localhost.evil.test", "http://0.0.0.0"):
        with pytest.raises(ValueError):
            check_base_url(url)
    assert set(HttpAdapterSettings.model_fields) >= {"base_url", "connect_timeout", "read_timeout"}


@pytest.mark.parametrize("kit_type", sorted(KITS))
def test_a_redirect_is_never_followed_so_credentials_stay_with_the_vendor(kit_type):
    kit = KITS[kit_type]
    fake, _, adapter, _ = one(kit)
    hosts = []

    def redirect(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(302, headers={"location": "http://collector.evil.test/steal"})

    set_handler(adapter, redirect)
    with pytest.raises(VendorPermanentError, match="unexpected redirect"):
        list(adapter.read_changes(None))
    assert set(hosts) == {f"{kit_type}.vendor.test"}


def test_no_source_switches_tls_verification_off():
    pattern = re.compile(r"verify\s*=\s*False|CERT_NONE|_create_unverified_context|check_hostname\s*=\s*False"
                         r"|PYTHONHTTPSVERIFY|trust_env\s*=\s*False")
    hits = [f"{p.relative_to(ROOT)}:{n}" for folder in SOURCE for p in folder.rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


# -- nothing executes data ---------------------------------------------------------------------------------------

# Every dynamic part of SQL in state/, reviewed: what it is and why no data can reach it.
REVIEWED_SQL_PARTS = {
    "_OPTOUT_COLUMNS": "module constant: the opt-out column names",
    "', '.join(('i.' + c for c in _OPTOUT_COLUMNS.split(', ')))": "the same constant, prefixed with an alias",
    "', '.join(('s.' + c for c in _OPTOUT_COLUMNS.split(', ')))": "the same constant, prefixed with an alias",
    "','.join('?' * len(chunk))": "placeholders only; the values are parameters",
    "marks": "placeholders only (', '.join('?' * n)) in state/receipts.py; the keys are parameters",
    "table": "a temp-table name; every caller passes a literal ('incoming', 'staged', 'source_set')",
    "source_sql": "'?' or an alias column ('n.adapter') passed as a literal by the callers",
    "extra_where": "a literal condition from the callers, with '?' placeholders",
    "not_echo": "'AND NOT ' + _echo_sql('n', '?'): a builder over literals; the adapter name is a parameter",
    "select_sql": "a literal SELECT from the callers, with '?' placeholders",
    "from_where_sql": "a literal FROM/WHERE from the callers, with '?' placeholders",
    "condition": "built from _stronger_sql (rank CASEs over code constants) and literal conditions",
    "expected": "a CASE over the literal table sink_scopes; scopes go in as parameters",
    "assignments": "'name = ?' for checkpoint field names checked against a fixed allow-list",
    "name": "a savepoint name f'sp{depth}' from an integer counter",
    "number": "the integer schema version of a migration defined in code",
    "create[:-1]": "CREATE TABLE that sqlite-utils builds from a migration's literal column definitions",
    "sql": "assembled from literal column lists and conditions; every value is a parameter",
    "_echo_sql('incoming', '?')": "SQL builder over literals; the adapter name is a parameter",
    "_echo_sql('i', '?')": "SQL builder over literals; the adapter name is a parameter",
    "_stronger_sql('excluded', 'staged')": "rank CASEs built from the REASON_RANK/ORIGIN_RANK constants",
    "_stronger_sql('excluded', table)": "rank CASEs over constants; table as above",
    "_stronger_sql('n', 'suppressions')": "rank CASEs built from the REASON_RANK/ORIGIN_RANK constants",
    "_stronger_sql('n', 's')": "rank CASEs built from the REASON_RANK/ORIGIN_RANK constants",
    "PAGE_SIZE": "module constant: the page size of a new store (an integer)",
    "JOURNAL_SIZE_LIMIT": "module constant: the WAL size limit in bytes (an integer)",
    "int(busy_ms)": "an integer: the idle checkpoint's busy timeout",
    "int(self.busy_timeout * 1000)": "an integer: the connection's busy timeout in ms, from validated settings",
    "upsert": "a literal ON CONFLICT clause with _stronger_sql('excluded', table) as above",
    "' AND '.join(where)": "literal conditions with '?' placeholders; values are parameters",
    "STAGING_CACHE_KIB": "module constant in imports: the temp table's page cache (KiB) while an import stages",
    "int(previous)": "an integer: the temp cache size SQLite reported before the import, given back",
    # PostgreSQL (issue 20's groundwork)
    "_COLUMN_LIST": "module constant in pg_events: the events columns an append writes",
    "_INSERT": "module constant in pg_events: the append's INSERT over _COLUMN_LIST with %s placeholders",
    "_BASELINE": "module constant in pg_schema: version 6's CREATE statements",
    "_CREATE_VERSION_TABLE": "module constant in pg_schema: CREATE TABLE schema_version",
    "column": "an identity column's name (with its table) from information_schema, double-quoted (reset_identities)",
    "_placeholders(sql)": "Store's own SQL (code constants as reviewed here) with '?' turned into %s",
    "columns": "temp-table column definitions, a literal in PgStore._ensure_temp_tables; or event column names",
    "_SUPPRESSED_COLUMNS": "module constant in pg_store: the column names suppress_selected's SELECT gives",
    "PUSH_EVENT_COLUMNS": "module constant in store: the event columns record_push writes",
    "full": "Store._insert_rows: the caller's INSERT head (a literal, or event columns that checked_event_columns "
            "passed) and rows of '?' placeholders",
    "', '.join([row] * (len(rows) - whole))": "Store._insert_rows: rows of '?' placeholders only",
    "statement": "'ROLLBACK', or ROLLBACK TO / RELEASE of a savepoint named f'sp{depth}' (an integer counter)",
    "_echo_sql('incoming', '%s::text', POSTGRESQL)": "SQL builder over literals; the adapter name is a parameter",
    "('recorded_at', 'kind', 'address', 'scope', 'reason', 'origin', 'source', 'occurred_at', 'message', 'details')":
        "literal event column names (_append_events builds the INSERT with one placeholder each)",
    "('recorded_at', 'kind', 'address', 'scope', 'target', 'message', 'details')":
        "literal event column names (_append_events builds the INSERT with one placeholder each)",
    "', '.join(columns)": "event column names: the literal tuples above, or an append_event mapping's keys"
                          " (literals in lifts.py)",
    "', '.join('?' * len(columns))": "placeholders only; the values are parameters",
    # Lifts, imports and receipts on both backends (issue 20)
    "store.dialect.placeholders(_NEW_OPTOUTS)": "module constant in imports (the new opt-outs' SELECT), '?' as %s",
    "ddl": "the import's staging DDL: literal tuples _SqliteStaging.CREATE / _PgStaging.CREATE",
    "staging.DROP": "the import's staging DROP: a literal _SqliteStaging.DROP / _PgStaging.DROP",
    "store.dialect.json_text('details', 'outcome')": "sql_dialect's JSON reader over a literal column and key",
    "target": "COPY target: a literal 'table (columns)' of PgStore.copy_rows's callers ('import_load (address)')",
    "store.dialect.insert_or_ignore('webhook_receipts (adapter, key, received_at) VALUES (?, ?, ?)')":
        "sql_dialect's INSERT skipping held keys over a literal table, columns and placeholders",
    # PostgreSQL port, phase 2 (re-subscribes, reconcile, snapshots, dashboard): state/sql_dialect.py's
    # spellings over literal column names, and literal event column tuples
    "d.seconds_between('a.recorded_at', 'COALESCE(s.occurred_at, s.recorded_at)')":
        "Dialect builder over literal column names (julianday or EXTRACT(EPOCH))",
    "d.json_text('a.details', 'outcome')": "Dialect builder over a literal column and key",
    "d.json_text('details', 'resubscribe_by')": "Dialect builder over a literal column and key",
    "_echo_sql('i', '?::text', POSTGRESQL)": "SQL builder over literals; the adapter name is a parameter",
    "store.dialect.greatest('lifts.lifted_at', 'excluded.lifted_at')": "Dialect builder over literal column names",
    "store.dialect.insert_or_ignore('removals_due (adapter, lift_seq, due_at) VALUES (?, ?, ?)')":
        "Dialect builder over a literal INSERT with '?' placeholders",
    "store.dialect.insert_or_ignore('snapshot_contacts (snapshot, contact_id, address, occurred_at, "
    "bounce_category) VALUES (?, ?, ?, ?, ?)')": "Dialect builder over a literal INSERT with '?' placeholders",
    "store.dialect.insertion_order()": "a Dialect constant: rowid or row_order",
    "d.same('occurred_at', '?')": "Dialect builder: IS or IS NOT DISTINCT FROM over a literal column and '?'",
    "store.dialect.latest_per('e.address', 'COALESCE(e.occurred_at, e.recorded_at)', category, 'FROM events e "
    "WHERE ' + ' AND '.join(where))": "Dialect builder over literal columns, a json_text builder and literal "
                                      "conditions with '?' placeholders",
    "self.dialect.temp_table('merge_missing')": "a Dialect builder over a literal temp-table name",
    "('recorded_at', 'kind', 'address', 'scope', 'source', 'target', 'occurred_at', 'message')":
        "literal event column names (_append_events builds the INSERT with one placeholder each)",
    "('recorded_at', 'kind', 'address', 'scope', 'target', 'ref_seq', 'message')":
        "literal event column names (_append_events builds the INSERT with one placeholder each)",
    "('recorded_at', 'kind', 'address', 'scope', 'reason', 'target', 'message', 'details')":
        "literal event column names (_append_events builds the INSERT with one placeholder each)",
    # store copy (state/store_copy.py): table and column names, each checked against [a-z_][a-z0-9_]* and quoted
    "_name(spec.name)": "a table of COPIED_TABLES (a code constant), matched against the store's catalogue",
    "_names(spec.sqlite_columns())": "the table's columns from SQLite's pragma_table_info (checked names), and rowid",
    "_names(spec.pg_columns())": "the same columns, and pg_schema.IMPLICIT_ROWID_COLUMNS' row_order (a constant)",
    "_names(spec.key)": "the table's primary key columns from pragma_table_info (checked names)",
    "insert": "store_copy: INSERT over _name/_names as above with one '?' placeholder per column; "
              "Store._insert_rows: the caller's INSERT head (a literal, or event columns checked_event_columns "
              "passed); values are parameters",
}
SQL_SINKS = {"execute": [0], "executemany": [0], "executescript": [0], "_write": [0], "suppress_selected": [0],
             "_stage": [0], "_record_stronger": [1, 2, 3], "_load_incoming": [1], "_drop_lifted": [0],
             # PostgreSQL (state/pg_store.py, pg_events.py): its statements, appends and COPY
             "_sql": [0], "_many": [0], "append_selected": [1], "copy": [0], "_append_events": [0],
             "_streamed": [0]}


def dynamic_parts(node: ast.AST) -> list[str]:
    """The source text of every non-literal piece of a string expression."""
    if isinstance(node, ast.Constant):
        return []
    if isinstance(node, ast.JoinedStr):
        return [p for v in node.values if isinstance(v, ast.FormattedValue) for p in [ast.unparse(v.value)]]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return dynamic_parts(node.left) + dynamic_parts(node.right)
    if isinstance(node, ast.IfExp):
        return dynamic_parts(node.body) + dynamic_parts(node.orelse)
    return [ast.unparse(node)]


def test_sql_is_built_only_from_reviewed_code_constants():
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "state").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_SINKS:
                for index in SQL_SINKS[node.func.attr]:
                    if index < len(node.args):
                        for part in dynamic_parts(node.args[index]):
                            found.setdefault(part, []).append(f"{path.name}:{node.lineno}")
    # `now` is the timestamp argument of _record_stronger, a parameter value, not SQL.
    unreviewed = {part: where for part, where in found.items() if part not in REVIEWED_SQL_PARTS and part != "now"}
    report("nothing executes data (SQL review)", [
        f"SQL in state/: {sum(map(len, found.values()))} calls with dynamic parts, {len(found)} distinct parts, "
        f"all reviewed (names and placeholders from code; every value is a parameter)",
    ])
    assert unreviewed == {}, f"review these SQL parts and add them to REVIEWED_SQL_PARTS: {unreviewed}"
    # Outside state/ no SQL is built at all.
    for folder in (ROOT / "connector", ROOT / "adapters", ROOT / "receiver"):
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("execute", "executemany", "executescript") and node.args:
                    assert dynamic_parts(node.args[0]) == [], f"{path.name}:{node.lineno} builds SQL"


def test_no_code_executes_data_or_a_shell():
    dangerous_calls = {"eval", "exec", "compile", "__import__"}
    dangerous_attrs = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("pickle", "loads"),
                       ("pickle", "load"), ("marshal", "loads"), ("yaml", "load")}
    hits = []
    for folder in SOURCE:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                    if any(n and n.split(".")[0] in ("subprocess", "pickle", "marshal", "shelve") for n in names):
                        hits.append(f"{path.name}:{node.lineno}: imports {names}")
                if not isinstance(node, ast.Call):
                    continue
                if isinstance(node.func, ast.Name) and node.func.id in dangerous_calls:
                    hits.append(f"{path.name}:{node.lineno}: {node.func.id}()")
                if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                        and (node.func.value.id, node.func.attr) in dangerous_attrs:
                    hits.append(f"{path.name}:{node.lineno}: {node.func.value.id}.{node.func.attr}()")
                if any(k.arg == "shell" for k in node.keywords):
                    hits.append(f"{path.name}:{node.lineno}: shell=")
    text_hits = [f"{p.name}:{n}" for folder in SOURCE for p in folder.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"\beval\(|\bexec\(|os\.system|shell=True", line)]
    report("nothing executes data (source scan)", [
        "no eval/exec/compile/__import__, os.system/popen, subprocess, pickle/marshal or shell= in "
        "connector/, adapters/, state/"])
    assert hits == [] and text_hits == [], hits + text_hits


def test_the_environment_cannot_turn_verification_off(monkeypatch):
    """httpx trusts SSL_CERT_FILE/SSL_CERT_DIR (another CA bundle), never a switch that disables checks."""
    monkeypatch.setenv("PYTHONHTTPSVERIFY", "0")
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    adapter = https_adapter("hubspot")
    context = adapter.http._client._transport._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    adapter.close()


def test_every_field_of_a_vendor_error_is_scrubbed():
    """Found by the 401 above: Mailchimp's title (the category) quoted the Basic credential unscrubbed."""
    from adapters.http import HttpClient, VendorError
    from tests.fakes.clock import FakeClock

    secret = f"sk-{MARK}"
    config = HttpAdapterSettings(name="v", type="t", base_url="https://v.test", max_attempts=1)
    client = HttpClient("v", config, transport=httpx.MockTransport(lambda r: httpx.Response(401, json={})),
                        describe_error=lambda response, now: VendorError(f"m {secret}", f"c {secret}", f"id {secret}"),
                        clock=FakeClock(), secrets=[secret])
    with pytest.raises(VendorPermanentError) as caught:
        client.request("GET", "/x", endpoint="GET /x")
    assert secret not in str(caught.value) and secret not in repr(caught.value.__dict__)
    assert caught.value.category == "c ***" and caught.value.correlation_id == "id ***"

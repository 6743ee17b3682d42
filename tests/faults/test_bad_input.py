"""Bad input: a corpus of malformed settings files, CSVs (csv_folder and `import`) and vendor answers.

Each must give its specific error (or a listed rejection naming the problem), never a traceback, and
never change the opt-out data in the store (compared as a snapshot before and after). Hypothesis then
fuzzes the CSV readers and every HTTP adapter's answer parsing with random bytes and JSON shapes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.csv_folder import CsvFolderAdapter, CsvFolderSettings
from connector.cli import main
from connector.csv_import import ImportFile
from connector.engine import Engine
from connector.settings import load_settings, validate_settings
from state.addresses import normalise_address
from state.errors import ConfigError, InputError, OptOutSyncError
from state.models import OptOut, Page, Rejected
from state.store import Store
from tests.conftest import write_settings

from .figures import report
from .helpers import FAST, new_optouts, one, seed_vendor, set_handler, snapshot
from .vendors import KITS, TOPICS

CORPUS = Path(__file__).parent / "corpus"
SETTINGS_FILES = sorted((CORPUS / "settings").glob("*.toml"))
FOLDER_EXPECT = json.loads((CORPUS / "csv_folder" / "expect.json").read_text(encoding="utf-8"))
IMPORT_EXPECT = json.loads((CORPUS / "import" / "expect.json").read_text(encoding="utf-8"))
FUZZ_CSV, FUZZ_ANSWERS = 150, 40
RESPONSES = [(kit, case["case"], case["body"]) for kit in sorted(KITS)
             for case in json.loads((CORPUS / "responses" / f"{kit}.json").read_text(encoding="utf-8"))]


def test_the_corpus_holds_at_least_100_malformed_inputs():
    counts = {"settings files": len(SETTINGS_FILES), "csv_folder files": len(FOLDER_EXPECT),
              "import files": len(IMPORT_EXPECT), "vendor answers": len(RESPONSES)}
    report("bad-input corpus", [
        ", ".join(f"{k}: {v}" for k, v in counts.items()) + f"; total {sum(counts.values())}",
        f"Hypothesis: csv_folder reader {FUZZ_CSV} examples, import reader {FUZZ_CSV}, {len(KITS)} adapters x "
        f"(read, write, check) x {FUZZ_ANSWERS} examples of random or mutated JSON answers"])
    assert sum(counts.values()) >= 100
    assert {p.name for p in (CORPUS / "csv_folder").glob("*.csv")} == set(FOLDER_EXPECT)
    assert {p.name for p in (CORPUS / "import").iterdir() if p.name != "expect.json"} == set(IMPORT_EXPECT)


def seeded_store(folder: Path) -> Path:
    """A store holding one suppression already, so that 'unchanged' means something."""
    path = folder / "store.db"
    with Store(path) as store:
        store.ingest_page("import", Page([OptOut("kept@example.com")]))
        store.promote("import")
    return path


# -- settings files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=[p.stem for p in SETTINGS_FILES])
def test_a_malformed_settings_file_gives_its_specific_error(path, tmp_path):
    expected = path.read_bytes().split(b"\n", 1)[0].decode().removeprefix("# expect: ")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    with pytest.raises(ConfigError) as caught:
        load_settings(copy, environ={})
    assert expected in str(caught.value) and str(copy) in str(caught.value)
    for command in (["check"], ["sync", "--once"], ["status", "--json"]):
        result = CliRunner().invoke(main, ["--config", str(copy), *command])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert expected in result.output and "Traceback" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "a store or other file was created"


# -- CSV files in a csv_folder source -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FOLDER_EXPECT))
def test_a_malformed_csv_in_a_watched_folder_is_a_listed_rejection_and_changes_no_opt_out(name, tmp_path):
    (tmp_path / "inbox").mkdir()
    shutil.copy(CORPUS / "csv_folder" / name, tmp_path / "inbox" / name)
    store_path = seeded_store(tmp_path)
    before = snapshot(store_path)
    settings = validate_settings({"store": {"path": str(store_path)}, "topics": TOPICS, "adapters": [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "settle_seconds": 0}]}, tmp_path / "settings.toml")
    adapter = CsvFolderAdapter(settings.adapter("inbox"), settings.topics)
    with Store(store_path) as store:
        report_ = Engine(settings, store, {"inbox": adapter}).cycle("inbox")
        messages = [f["message"] for f in store.failures("inbox")]
    assert report_.error is None and report_.added == 0
    assert any(FOLDER_EXPECT[name] in m for m in messages), messages
    after = snapshot(store_path)
    assert {t: after[t] for t in ("suppressions", "events", "staged", "lifts")} == \
        {t: before[t] for t in ("suppressions", "events", "staged", "lifts")}


# -- files given to `optout-sync import` ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IMPORT_EXPECT))
def test_a_malformed_import_file_gives_its_specific_error_and_imports_nothing(name, tmp_path):
    args, expected = IMPORT_EXPECT[name]
    settings = write_settings(tmp_path, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}],
                              topics={"newsletter": "News"})
    store_path = seeded_store(tmp_path)
    before = snapshot(store_path)
    result = CliRunner().invoke(main, ["--config", str(settings), "import", str(CORPUS / "import" / name),
                                       "--confirm", "1", *args])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert any(option.strip() in result.output for option in expected.split(" | ")), result.output
    assert name in result.output and "Traceback" not in result.output
    assert snapshot(store_path) == before


@pytest.mark.parametrize("target", ["a folder", "no such file"])
def test_import_of_a_folder_or_a_missing_file_is_a_clear_error(target, tmp_path):
    settings = write_settings(tmp_path, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}])
    path = tmp_path if target == "a folder" else tmp_path / "missing.csv"
    result = CliRunner().invoke(main, ["--config", str(settings), "import", str(path), "--confirm", "1"])
    assert result.exit_code == 2 and ("is a directory" in result.output or "no such file" in result.output.lower()
                                      or "does not exist" in result.output)


# -- vendor answers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kit_name, case, body", RESPONSES, ids=[f"{k}-{c}" for k, c, _ in RESPONSES])
def test_a_malformed_vendor_answer_is_a_specific_error_and_changes_no_opt_out(kit_name, case, body, tmp_path):
    kit = KITS[kit_name]
    fake, _, _, clock = one(kit)  # an empty account: whatever the read takes in comes from the bad answer
    answered = []

    def first_read_broken(request: httpx.Request) -> httpx.Response:
        answered.append(request.url.path)
        if request.url.path == answered[0]:  # every try at the first endpoint of the read
            return httpx.Response(200, content=body.encode(), headers={"content-type": "application/json"})
        return fake.handle(request)

    store_path = seeded_store(tmp_path)
    settings = validate_settings({"store": {"path": str(store_path)}, "topics": TOPICS, "adapters": [
        # Read only: the engine pushes even after a failed read, and this is about what a read takes in.
        {**kit.settings(kit.type, f"https://{kit.type}.vendor.test", kit.token), **FAST, "max_attempts": 2,
         "role": "read"}]},
        tmp_path / "settings.toml")
    adapter = kit.build(settings.adapter(kit.type), httpx.MockTransport(first_read_broken), clock)
    before = snapshot(store_path)
    with Store(store_path) as store:
        result = Engine(settings, store, {kit.type: adapter}).cycle(kit.type)
        rejected = [f["message"] for f in store.failures(kit.type) if f["kind"] == "rejected"]
    after = snapshot(store_path)
    if result.error is not None:
        text = str(result.error)
        assert isinstance(result.error, OptOutSyncError), repr(result.error)
        assert text.startswith(f"{kit.type}: GET /"), text
        assert after == before
    else:
        # Accepted only where the bad item is listed with its reason and nothing new is suppressed
        # (the push that follows a good read may still apply what the store held).
        assert rejected, f"{case}: the answer was taken without an error or a listed rejection"
        assert after["suppressions"] == before["suppressions"] and after["staged"] == before["staged"]


# -- Hypothesis: the CSV readers ---------------------------------------------------------------------------------

CSV_ALPHABET = st.sampled_from([b"a", b"@", b".", b",", b";", b"\t", b'"', b"\n", b"\r", b" ", b"\x00", b"\xff",
                                b"\xef\xbb\xbf", b"email", b"scope", b"reason", b"x@example.com", b"\xe9",
                                b"newsletter", b"2024-01-01", b"*"])
CSV_BYTES = st.one_of(st.binary(max_size=400), st.lists(CSV_ALPHABET, max_size=80).map(b"".join))


@settings(max_examples=FUZZ_CSV, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=CSV_BYTES, page_size=st.integers(1, 7))
def test_fuzz_the_csv_folder_reader_gives_opt_outs_or_rejections_only(content, page_size, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inbox")
    (folder / "list.csv").write_bytes(content)
    adapter = CsvFolderAdapter(CsvFolderSettings(name="inbox", path=folder, settle_seconds=0,
                                                 page_size=page_size), {"newsletter": "N"})
    for page in adapter.read_changes(None):
        for optout in page.optouts:
            assert normalise_address(optout.address) == optout.address
        assert all(isinstance(r, Rejected) and r.reason for r in page.rejected)
        json.loads(page.cursor)  # the cursor it would save is readable again


@settings(max_examples=FUZZ_CSV, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=CSV_BYTES, suffix=st.sampled_from([".csv", ".txt", ".xlsx"]),
       column=st.one_of(st.none(), st.sampled_from(["1", "2", "email", "nope"])))
def test_fuzz_the_import_reader_gives_rows_or_an_input_error(content, suffix, column, tmp_path_factory):
    path = tmp_path_factory.mktemp("import") / f"list{suffix}"
    path.write_bytes(content)
    try:
        rows = list(ImportFile(path, column=column).rows())
    except InputError as exc:
        assert str(path) in str(exc)
        return
    assert all(row.number >= 1 and (row.raw is not None or row.problem) for row in rows)


# -- Hypothesis: every adapter's answer parsing --------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from(["a@example.com", "not-an-address", "2024-01-01T00:00:00Z", "UNSUBSCRIBED", "*", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["results", "timeline", "hasMore", "offset", "items", "paging", "next", "email",
                         "address", "created", "Suppressions", "EmailAddress", "members", "abuse_reports",
                         "total_items", "status", "recipient", "changes", "timestamp", "statuses", "errors",
                         "subscriberIdString", "message", "tags", "x"]), children, max_size=5),
    max_leaves=12)


def mutate(data, value):
    """The value with one node somewhere inside replaced by a value Hypothesis draws."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: mutate(data, value[key])}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        return value[:index] + [mutate(data, value[index])] + value[index + 1:]
    return data.draw(JSON_VALUES)


def fuzzed(kit_name: str, data, operation: str):
    """Run a read or a write of one adapter whose answers are all random JSON or mutated real answers."""
    kit = KITS[kit_name]
    # Hypothesis draws only on the test's own thread: Mailchimp's look-ups go one at a time here.
    fake, _, adapter, clock = one(kit, max_attempts=1, **({"concurrent_requests": 1} if kit.type == "mailchimp" else {}))
    seed_vendor(kit, fake, clock, count=6)

    def handle(request: httpx.Request) -> httpx.Response:
        real = fake.handle(request)
        try:
            body = real.json()
        except ValueError:
            body = None
        shaped = mutate(data, body) if body is not None and data.draw(st.booleans()) else data.draw(JSON_VALUES)
        return httpx.Response(real.status_code if real.is_success else 200, json=shaped)

    set_handler(adapter, handle)
    try:
        if operation == "read":
            for page in adapter.read_changes(None):
                assert all(normalise_address(o.address) == o.address for o in page.optouts)
            for page in adapter.read_all():
                assert all(normalise_address(o.address) == o.address for o in page.optouts)
        elif operation == "write":
            batch = new_optouts(3) + [OptOut("new4@example.com", "newsletter")]
            results = adapter.apply(batch)
            assert [r.optout for r in results] == batch
        else:
            adapter.check()
    except OptOutSyncError as exc:  # PermanentError, TransientError or ConfigError, naming the adapter
        assert str(exc).startswith(f"{kit_name}"), str(exc)


@pytest.mark.parametrize("operation", ["read", "write", "check"])
@pytest.mark.parametrize("kit_name", sorted(KITS))
def test_fuzz_every_adapter_with_random_answers_raises_only_project_errors(kit_name, operation):
    @settings(max_examples=FUZZ_ANSWERS, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def run(data):
        fuzzed(kit_name, data, operation)

    run()

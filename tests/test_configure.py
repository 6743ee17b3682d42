"""`optout-sync config`, `init` and `check --adapter`: where each setting came from, a first settings file,
and a probe that names what a refused adapter lacks."""

from __future__ import annotations

import json
import stat

import httpx
import pytest
from click.testing import CliRunner

from adapters import registry
from adapters.hubspot import HubSpotAdapter
from adapters.sendgrid import SendGridAdapter
from connector.cli import main
from connector.settings import load_settings

from .fakes.clock import FakeClock
from .fakes.hubspot import ALL_SCOPES, FakeHubSpot
from .fakes.sendgrid import FakeSendGrid

SECRET = "pat-na1-this-is-the-secret-text-0123456789"
HUBSPOT_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
SENDGRID_KEY = "SG.abcdefghijklmnop.qrstuvwxyz0123456789-secret"


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"OPTOUT_SYNC_CONFIG": None, **(env or {})})


# -- config ------------------------------------------------------------------------------------------------


def test_config_names_the_origin_of_each_value_and_never_shows_the_secret(tmp_path):
    (tmp_path / "crm-token").write_text(SECRET + "\n")
    path = tmp_path / "settings.toml"
    path.write_text('[store]\npath = "store.db"\n[topics]\nnews = "News"\n'
                    '[[adapters]]\nname = "crm"\ntype = "hubspot"\ntoken_file = "crm-token"\n'
                    'topics = { news = "101" }\n')
    env = {"OPTOUT_SYNC_LOGGING__LEVEL": "debug", "OPTOUT_SYNC_ADAPTERS__CRM__INTERVAL": "30s"}
    human = cli("--config", str(path), "config", env=env)
    machine = cli("--config", str(path), "config", "--json", env=env)
    assert human.exit_code == 0 and machine.exit_code == 0, human.output + machine.output
    lines = human.output.splitlines()
    assert f'store.path = "{tmp_path / "store.db"}"  ({path}, key store.path)' in lines
    assert 'logging.level = "debug"  (environment variable OPTOUT_SYNC_LOGGING__LEVEL)' in lines
    assert "adapters.crm.interval = 30.0  (environment variable OPTOUT_SYNC_ADAPTERS__CRM__INTERVAL)" in lines
    assert (f"adapters.crm.token = ***  (secret file {tmp_path / 'crm-token'} (named by {path}, key "
            "adapters[0].token_file))") in lines
    assert f'adapters.crm.topics.news = "101"  ({path}, key adapters[0].topics.news)' in lines
    assert 'logging.format = "human"  (default)' in lines
    entries = {e["key"]: e for e in json.loads(machine.output)["settings"]}
    assert entries["logging.level"]["origin"] == {"kind": "environment", "variable": "OPTOUT_SYNC_LOGGING__LEVEL"}
    assert entries["adapters.crm.interval"] == {"key": "adapters.crm.interval", "value": 30.0, "origin": {
        "kind": "environment", "variable": "OPTOUT_SYNC_ADAPTERS__CRM__INTERVAL"}}
    assert entries["adapters.crm.token"] == {"key": "adapters.crm.token", "value": "***", "origin": {
        "kind": "secret_file", "file": str(tmp_path / "crm-token"),
        "named_by": {"kind": "file", "file": str(path), "key": "adapters[0].token_file"}}}
    assert entries["store.path"]["origin"] == {"kind": "file", "file": str(path), "key": "store.path"}
    assert entries["store.busy_timeout"]["origin"] == {"kind": "default"}
    for output in (human.output, machine.output):
        assert SECRET not in output and "this-is-the-secret" not in output


def test_config_shows_command_line_options_as_the_strongest_source(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text('[logging]\nformat = "human"\n')
    result = cli("--config", str(path), "--log-format", "json", "config", "--json",
                 env={"OPTOUT_SYNC_LOGGING__FORMAT": "human"})
    entry = next(e for e in json.loads(result.output)["settings"] if e["key"] == "logging.format")
    assert entry == {"key": "logging.format", "value": "json",
                     "origin": {"kind": "command_line", "option": "--log-format"}}


# -- init --------------------------------------------------------------------------------------------------


def test_init_writes_the_chosen_adapters_with_empty_private_secret_files_and_never_overwrites(tmp_path):
    target = tmp_path / "settings.toml"
    result = cli("init", "--adapter", "hubspot:crm", "--adapter", "sendgrid", str(target))
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert 'name = "crm"\ntype = "hubspot"' in text and 'name = "sendgrid"\ntype = "sendgrid"' in text
    assert 'token_file = "secrets/crm-token"' in text and 'api_key_file = "secrets/sendgrid-api_key"' in text
    assert "# The access token of a HubSpot private app" in text  # the field's description, as a comment
    assert "csv_folder" not in text and "\ntoken =" not in text
    secrets = [tmp_path / "secrets" / "crm-token", tmp_path / "secrets" / "sendgrid-api_key"]
    for secret in secrets:
        assert secret.read_bytes() == b"" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    # The check that follows names what is still missing: both empty secret files, by key.
    assert f"token_file: {secrets[0]} is empty; put the token in it" in result.output
    assert f"api_key_file: {secrets[1]} is empty; put the api_key in it" in result.output

    secrets[0].write_text(HUBSPOT_TOKEN + "\n")
    secrets[1].write_text(SENDGRID_KEY + "\n")
    settings = load_settings(target, environ={})
    assert [(a.name, a.type) for a in settings.adapters] == [("crm", "hubspot"), ("sendgrid", "sendgrid")]
    assert settings.adapter("crm").token.get_secret_value() == HUBSPOT_TOKEN

    before = target.read_text()
    again = cli("init", "--adapter", "hubspot:crm", str(target))
    assert again.exit_code == 3
    assert again.output.strip().splitlines() == [
        f"refused: {target} exists; init never overwrites a file (remove it or choose another FILE)"]
    assert target.read_text() == before and secrets[0].read_text() == HUBSPOT_TOKEN + "\n"
    # A new settings file whose secret file already exists is refused too, and nothing is written.
    other = tmp_path / "other.toml"
    refused = cli("init", "--adapter", "hubspot:crm", str(other))
    assert refused.exit_code == 3 and f"{secrets[0]} exists" in refused.output and not other.exists()


def test_init_without_adapters_writes_the_csv_pair_and_checks_it(tmp_path):
    target = tmp_path / "settings.toml"
    result = cli("init", str(target))
    assert result.exit_code == 0, result.output
    settings = load_settings(target, environ={})
    assert [(a.name, a.type) for a in settings.adapters] == [("inbox", "csv_folder"),
                                                              ("suppression-list", "csv_file")]
    assert not (tmp_path / "secrets").exists()
    assert "  store: ok" in result.output


def test_init_refuses_an_unknown_type_naming_the_known_ones(tmp_path):
    result = cli("init", "--adapter", "salesforce", str(tmp_path / "s.toml"))
    assert result.exit_code == 2 and "unknown type 'salesforce'; known: csv_file, csv_folder" in result.output
    assert not (tmp_path / "s.toml").exists()


# -- check --adapter ---------------------------------------------------------------------------------------


@pytest.fixture
def vendors(tmp_path, monkeypatch):
    """Settings with a HubSpot and a SendGrid adapter, each talking to its fake (returned for tuning)."""
    clock = FakeClock(1_700_000_000)
    hub, grid = FakeHubSpot(HUBSPOT_TOKEN, clock=clock), FakeSendGrid(SENDGRID_KEY, clock=clock)

    class HubSpotOnFake(HubSpotAdapter):
        def __init__(self, settings, topics):
            super().__init__(settings, topics, transport=httpx.MockTransport(hub.handle), clock=clock)

    class SendGridOnFake(SendGridAdapter):
        def __init__(self, settings, topics):
            super().__init__(settings, topics, transport=httpx.MockTransport(grid.handle), clock=clock)

    monkeypatch.setitem(registry.ADAPTER_TYPES, "hubspot", HubSpotOnFake)
    monkeypatch.setitem(registry.ADAPTER_TYPES, "sendgrid", SendGridOnFake)
    (tmp_path / "hs").write_text(HUBSPOT_TOKEN)
    (tmp_path / "sg").write_text(SENDGRID_KEY)

    def write(hub_topic: str = "101", group: str = "101") -> str:
        path = tmp_path / "settings.toml"
        path.write_text('[store]\npath = "store.db"\n[topics]\nnews = "News"\n'
                        f'[[adapters]]\nname = "crm"\ntype = "hubspot"\ntoken_file = "hs"\n'
                        f'topics = {{ news = "{hub_topic}" }}\nmax_attempts = 1\n'
                        f'[[adapters]]\nname = "esp"\ntype = "sendgrid"\napi_key_file = "sg"\n'
                        f'topics = {{ news = "{group}" }}\nmax_attempts = 1\n')
        return str(path)

    return hub, grid, write


def test_check_one_adapter_probes_only_that_one(vendors):
    hub, grid, write = vendors
    result = cli("--config", write(), "check", "--adapter", "crm")
    assert result.exit_code == 0, result.output
    assert "  crm: ok" in result.output and "esp" not in result.output
    assert hub.requests and not grid.requests
    assert not [r for r in hub.requests if r.method != "GET" and "read" not in r.path]  # read-only
    unknown = cli("--config", write(), "check", "--adapter", "nope")
    assert unknown.exit_code == 2 and "no adapter named 'nope'; configured: crm, esp" in unknown.output


def test_check_names_the_missing_subscription_type_and_group(vendors):
    hub, grid, write = vendors
    config = write(hub_topic="999", group="777")
    crm = cli("--config", config, "check", "--adapter", "crm")
    assert crm.exit_code == 1
    assert "topic news maps to subscription 999, which business unit 0 does not have" in crm.output
    esp = cli("--config", config, "check", "--adapter", "esp")
    assert esp.exit_code == 1 and "topic news maps to group 777, which SendGrid does not have" in esp.output


def test_check_names_a_refused_credential(vendors):
    hub, grid, write = vendors
    hub.token, grid.api_key = "pat-na1-another", "SG.another"
    config = write()
    crm = cli("--config", config, "check", "--adapter", "crm")
    assert crm.exit_code == 1
    assert ("crm: FAILED\n    the token was refused (GET /communication-preferences/v4/definitions answered 401 "
            "INVALID_AUTHENTICATION): put a valid one in token (or token_file)") in crm.output
    esp = cli("--config", config, "check", "--adapter", "esp")
    assert esp.exit_code == 1
    assert ("esp: FAILED\n    the api_key was refused (GET /v3/asm/groups answered 401): put a valid one in "
            "api_key (or api_key_file)") in esp.output
    assert HUBSPOT_TOKEN not in crm.output + esp.output and SENDGRID_KEY not in crm.output + esp.output


def test_check_names_the_missing_hubspot_scope_and_sendgrid_permission(vendors):
    hub, grid, write = vendors
    hub.scopes = set(ALL_SCOPES - {"content"})  # the v1 timeline's scope
    grid.fail(403, path="/v3/suppression/bounces", message="access forbidden")
    config = write()
    crm = cli("--config", config, "check", "--adapter", "crm")
    assert crm.exit_code == 1
    assert ("missing OAuth scope content (add it to the private app) (GET /email/public/v1/subscriptions/timeline "
            "answered 403 MISSING_SCOPES)") in crm.output
    esp = cli("--config", config, "check", "--adapter", "esp")
    assert esp.exit_code == 1
    assert ("missing API key permission suppression.read (or suppression.bounces.read) "
            "(GET /v3/suppression/bounces answered 403)") in esp.output

"""Settings: file choice, environment overrides, secrets, and errors that name file, key and expectation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest
from pydantic import SecretStr

from adapters import registry
from adapters.base import AdapterSettings
from connector.settings import config_path, load_settings, secret_file_warnings
from state.errors import ConfigError

from .conftest import write_settings

INBOX = {"name": "inbox", "type": "csv_folder", "path": "in"}
SINK = {"name": "sink", "type": "csv_file", "path": "out/s.csv"}


class SecretSettings(AdapterSettings):
    type: Literal["secretive"] = "secretive"
    token: SecretStr


class SecretAdapter:
    settings_model = SecretSettings


registry.register("secretive", SecretAdapter)


def test_the_example_settings_file_is_valid_and_documents_every_key():
    example = Path(__file__).parent.parent / "settings.example.toml"
    settings = load_settings(example, environ={})
    assert [a.name for a in settings.adapters] == ["inbox", "suppression-list"]
    assert settings.store.path == example.resolve().parent / "data" / "optout-sync.db"
    text = example.read_text()
    for adapter in settings.adapters:
        for key in type(adapter).model_fields:
            assert f"{key} " in text or f"# {key}" in text or f"  {key}" in text, f"{key} undocumented"


def test_config_path_precedence(tmp_path):
    assert config_path("given.toml", {"OPTOUT_SYNC_CONFIG": "env.toml"}) == Path("given.toml")
    assert config_path(None, {"OPTOUT_SYNC_CONFIG": "env.toml"}) == Path("env.toml")
    assert config_path(None, {}) == Path("settings.toml")


def test_relative_paths_are_relative_to_the_settings_file(tmp_path):
    path = write_settings(tmp_path, [INBOX, SINK])
    settings = load_settings(path, environ={})
    assert settings.adapter("inbox").path == tmp_path / "in"
    assert settings.adapter("sink").path == tmp_path / "out" / "s.csv"
    assert settings.store.path == tmp_path / "store.db"


def test_environment_overrides_sections_and_adapters_by_name(tmp_path):
    path = write_settings(tmp_path, [INBOX, SINK])
    settings = load_settings(path, environ={
        "OPTOUT_SYNC_LOGGING__FORMAT": "json",
        "OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL": "5s",
        "OPTOUT_SYNC_ADAPTERS__SINK__BATCH_SIZE": "7",
        "OPTOUT_SYNC_CONFIG": "ignored",
    })
    assert settings.logging.format == "json"
    assert settings.adapter("inbox").interval == 5.0
    assert settings.adapter("sink").batch_size == 7


def test_unknown_adapter_in_environment_is_named(tmp_path):
    path = write_settings(tmp_path, [INBOX])
    with pytest.raises(ConfigError, match="OPTOUT_SYNC_ADAPTERS__NOPE__INTERVAL names adapter 'nope'"):
        load_settings(path, environ={"OPTOUT_SYNC_ADAPTERS__NOPE__INTERVAL": "1"})


@pytest.mark.parametrize("adapters, topics, message", [
    ([{**INBOX, "pth": "x"}], None, "key 'adapters[0] (inbox).pth': unknown key"),
    ([{**INBOX, "interval": "soon"}], None, "key 'adapters[0] (inbox).interval': expected a duration"),
    ([{"name": "x", "type": "nosuch"}], None, "key 'adapters[0] (x).type': expected one of"),
    ([{"name": "x", "type": "csv_file"}], None, "key 'adapters[0] (x).path': required, but missing"),
    ([{**INBOX, "role": "write"}], None, "key 'adapters[0] (inbox).role'"),
    ([INBOX, {**SINK, "name": "inbox"}], None, "the name 'inbox' is used twice"),
    ([{**SINK, "scope": "sports"}], {"news": "N"}, "topic 'sports' is not defined"),
    ([{**INBOX, "topics": {"sports": "1"}}], {"news": "N"}, "topics.sports: topic 'sports' is not defined"),
    ([{**INBOX, "max_new_per_cycle": 0}], None, "max_new_per_cycle': Input should be greater than or equal to 1"),
])
def test_bad_settings_name_the_file_the_key_and_the_expectation(tmp_path, adapters, topics, message):
    path = write_settings(tmp_path, adapters, topics=topics)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_unknown_top_level_keys_and_bad_toml_are_rejected(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[store]\npath = 'x.db'\nsize = 3\n")
    with pytest.raises(ConfigError, match=r"key 'store.size': unknown key"):
        load_settings(path, environ={})
    path.write_text("[store\npath = 'x.db'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match="given with --config does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_secrets_from_env_or_file_are_hidden_in_repr(tmp_path):
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("s3cr3t-from-file\n")
    path = write_settings(tmp_path, [{"name": "v", "type": "secretive", "token_file": "token.txt"}])
    settings = load_settings(path, environ={})
    assert settings.adapter("v").token.get_secret_value() == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.model_dump())

    settings = load_settings(path, environ={"OPTOUT_SYNC_ADAPTERS__V__TOKEN": "s3cr3t-from-env"})
    assert settings.adapter("v").token.get_secret_value() == "s3cr3t-from-env"


def test_a_readable_settings_file_holding_a_secret_gives_a_warning(tmp_path):
    path = write_settings(tmp_path, [{"name": "v", "type": "secretive", "token": "abc"}])
    os.chmod(path, 0o644)
    assert "chmod 600" in secret_file_warnings(load_settings(path, environ={}))[0]
    os.chmod(path, 0o600)
    assert secret_file_warnings(load_settings(path, environ={})) == []


def test_a_bad_environment_value_is_blamed_on_the_variable_not_the_file(tmp_path):
    path = write_settings(tmp_path, [INBOX])
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL": "abc"})
    message = str(caught.value)
    assert message.startswith("invalid settings in the environment:"), message
    assert ("environment variable OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL sets key 'adapters[0] (inbox).interval': "
            "expected a duration") in message
    assert str(path) not in message  # the file is fine


def test_a_single_underscore_between_section_and_key_gets_the_variable_that_was_meant(tmp_path):
    path = write_settings(tmp_path, [INBOX])
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"OPTOUT_SYNC_LOGGING_LEVEL": "debug"})
    assert ("environment variable OPTOUT_SYNC_LOGGING_LEVEL sets key 'logging_level': unknown key; section and key "
            "are separated by '__': did you mean OPTOUT_SYNC_LOGGING__LEVEL?") in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"OPTOUT_SYNC_ADAPTERS_INBOX__INTERVAL": "3"})
    assert "did you mean OPTOUT_SYNC_ADAPTERS__INBOX__INTERVAL?" in str(caught.value)


def test_file_and_environment_problems_are_each_blamed_on_their_origin(tmp_path):
    path = write_settings(tmp_path, [{**INBOX, "interval": "soon"}])
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"OPTOUT_SYNC_LOGGING__LEVEL": "loud"})
    lines = str(caught.value).splitlines()
    assert lines[0] == f"invalid settings in {path} and the environment:"
    assert any(line.strip().startswith("key 'adapters[0] (inbox).interval'") for line in lines)
    assert any(line.strip().startswith("environment variable OPTOUT_SYNC_LOGGING__LEVEL sets key 'logging.level'")
               for line in lines)


def test_a_missing_settings_file_is_named_with_where_its_name_came_from(tmp_path, monkeypatch):
    given = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(given, environ={"OPTOUT_SYNC_CONFIG": str(tmp_path / "other.toml")})
    assert str(caught.value) == f"{given}: the settings file given with --config does not exist"
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"OPTOUT_SYNC_CONFIG": str(given)})
    assert str(caught.value) == f"{given}: the settings file named by OPTOUT_SYNC_CONFIG does not exist"
    monkeypatch.chdir(tmp_path)  # the default is ./settings.toml; here there is none
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={})
    assert str(caught.value) == "settings.toml: settings file not found (give --config or set OPTOUT_SYNC_CONFIG)"
    with pytest.raises(ConfigError, match="is a folder, not a settings file"):
        load_settings(tmp_path, environ={})


@pytest.mark.parametrize("interval, accepted", [(1, True), ("1s", True), ("1000ms", True), (0.5, False),
                                                 ("500ms", False), (0, False)])
def test_an_interval_below_one_second_is_refused_naming_key_value_and_floor(tmp_path, interval, accepted):
    path = write_settings(tmp_path, [{**INBOX, "interval": interval}])
    if accepted:
        assert load_settings(path, environ={}).adapter("inbox").interval == 1.0
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert (f"key 'adapters[0] (inbox).interval': must be at least 1 second (a shorter interval only spins), "
            f"got {interval!r}") in str(caught.value)


@pytest.mark.parametrize("every, seconds", [(0, 0.0), ("1s", 1.0), ("0.5s", None), ("10ms", None)])
def test_reconcile_every_is_never_or_at_least_one_second(tmp_path, every, seconds):
    path = write_settings(tmp_path, [{**INBOX, "reconcile_every": every}])
    if seconds is not None:
        assert load_settings(path, environ={}).adapter("inbox").reconcile_every == seconds
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert (f"key 'adapters[0] (inbox).reconcile_every': must be 0 (never) or at least 1 second, "
            f"got {every!r}") in str(caught.value)

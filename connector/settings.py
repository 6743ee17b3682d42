"""Settings: a pydantic-settings model over command-line options, OPTOUT_SYNC_* variables, secret files and a TOML file.

The file is chosen by --config, else OPTOUT_SYNC_CONFIG, else ./settings.toml.
Relative paths are relative to the settings file. Unknown keys and bad values
stop the start with a message naming the file, the key and what was expected.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from adapters import registry
from adapters.base import AdapterSettings, Duration, SettingsPath
from state.errors import ConfigError

from . import settings_sources as sources
from .settings_sources import CONFIG_ENV

ENV_PREFIX = "OPTOUT_SYNC_"
DEFAULT_CONFIG = "settings.toml"
TOPIC_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# The least stale_after when it is left unset: above the daemon's 5-minute cap on error
# back-off, and well below the default max_lag, so readiness fails before the lag alarm.
STALE_FLOOR = 900.0


class StoreSettings(BaseModel):
    """Where the store lives: a SQLite file (`path`), or a PostgreSQL database (`url` or `url_file`).

    Exactly one of `path` and `url`/`url_file` is given; with none, the SQLite file `optout-sync.db`.
    `url_file` names a secret file holding the URL (its text, stripped, becomes `url`). The URL may
    hold a password: it is never shown, only `config` shows it with the password as ***.
    """

    model_config = ConfigDict(extra="forbid")
    path: SettingsPath = Path("optout-sync.db")
    url: SecretStr | None = None
    url_file: SettingsPath | None = None
    # How long a writer waits for another's transaction (a long import) before it fails and retries.
    busy_timeout: Duration = 30.0

    @property
    def postgresql(self) -> bool:
        """True when the store is a PostgreSQL database (`url` or `url_file`), False for the SQLite file."""
        return self.url is not None

    def url_text(self) -> str:
        """The PostgreSQL URL itself (a secret: never log it); ConfigError on a SQLite store."""
        if self.url is None:
            raise ConfigError("the store is a SQLite file ([store] path), not a PostgreSQL database")
        return self.url.get_secret_value()


class SyncSettings(BaseModel):
    """Engine-wide defaults."""

    model_config = ConfigDict(extra="forbid")
    unmapped_topics: Literal["skip", "global"] = "skip"
    # What a recipient's own re-subscribe at an adapter does (state.resubscribes): release the
    # opt-out there (local), lift it everywhere as an audited lift (everywhere), or nothing (ignore).
    recipient_resubscribe: Literal["local", "everywhere", "ignore"] = "local"


class LoggingSettings(BaseModel):
    """How the daemon logs."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["human", "json"] = "human"
    level: Literal["debug", "info", "warning", "error"] = "info"
    show_addresses: bool = False
    file: SettingsPath | None = None


class _Listening(BaseModel):
    """A server's settings: `listen` is "host:port", checked when read; unset, no server is started."""

    model_config = ConfigDict(extra="forbid")
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value


class ServerSettings(_Listening):
    """The optional local HTTP server: Prometheus metrics, health checks, status page; and the lag alarm.

    `listen` is "host:port" (IPv6 as "[::1]:9464"); unset, no server is started.
    `stale_after` unset means: per adapter, 3 x its interval but at least 15 minutes,
    so readiness fails well before `max_lag` and never for one backed-off failure.
    `max_lag` applies with or without the server: an older unapplied opt-out raises the lag alarm.
    """

    stale_after: Duration | None = None
    max_lag: Duration = 3600.0

    @field_validator("stale_after", "max_lag")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive duration such as '30s', '15m' or '1h'")
        return value

    def stale_limit(self, interval: float) -> float:
        """Seconds without a successful cycle after which an adapter with this interval is not ready."""
        return self.stale_after if self.stale_after is not None else max(3 * interval, STALE_FLOOR)


class WebhookSettings(_Listening):
    """The optional webhook receiver (package `receiver`): one path per adapter, /hooks/<adapter name>.

    `listen` is "host:port"; unset, no receiver is started. The limits answer 413 (body larger
    than `max_body`), 400 (headers or body slower than their timeout) and 503 (more than
    `max_concurrency` requests at once). `max_age` is how old a signed timestamp may be
    (SendGrid, Mailgun); `sns_max_age` the same for SNS messages, whose retries keep their time.
    """

    max_body: int = Field(default=1_048_576, ge=1024, le=1_048_576)
    header_timeout: Duration = 10.0
    body_timeout: Duration = 10.0
    max_concurrency: int = Field(default=64, ge=1, le=10_000)
    max_age: Duration = 300.0
    sns_max_age: Duration = 3900.0

    @field_validator("header_timeout", "body_timeout", "max_age", "sns_max_age")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive duration such as '10s' or '5m'")
        return value


def listen_address(value: str) -> tuple[str, int]:
    """(host, port) from "host:port" or "[v6 address]:port"; ValueError naming what is wrong."""
    host, colon, port_text = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("expected 'host:port' such as '127.0.0.1:9464' (port 0-65535)")
    return host, int(port_text)


class Settings(BaseSettings):
    """Everything the daemon is configured with: a pydantic-settings model over the sources below.

    Load it with `load_settings()` (or, from a mapping, `validate_settings()`): they set up the
    load (file, environment, command-line values) that the sources read, and turn validation errors
    into one message naming where each bad value came from. Sources, strongest first: command-line
    options, `OPTOUT_SYNC_<SECTION>__<KEY>` variables, `OPTOUT_SYNC_ADAPTERS__<NAME>__<KEY>`,
    `<key>_file` secrets, the TOML file, the defaults (see connector/settings_sources.py).
    Adapters are validated each with its own type's model, after the sections.
    """

    model_config = SettingsConfigDict(extra="forbid", validate_default=True, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter="__", case_sensitive=False)

    store: StoreSettings = Field(default_factory=StoreSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    topics: dict[str, str] = Field(default_factory=dict)
    adapters: list[AdapterSettings] = Field(default_factory=list)
    source: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        load = sources.LOADING.get()
        if load is None or load.raw is not None:
            return (init_settings,)  # validate_settings(), or a bare Settings(...): the values given only
        file = sources.SettingsFileSource(settings_cls, load)  # read first: the adapter sources need its list
        return (init_settings, sources.EnvironmentSource(settings_cls, load),
                sources.AdapterEnvironmentSource(settings_cls, load), sources.SecretFileSource(settings_cls, load),
                file)

    @model_validator(mode="before")
    @classmethod
    def _take_adapters(cls, data: Any) -> Any:
        # Adapters are validated by type after the sections (a list of the base model cannot hold
        # each type's own keys); during a load they are taken out here, as the sources merged them.
        load = sources.LOADING.get()
        if load is not None and isinstance(data, dict):
            data = dict(data)
            if "adapters" in data:
                data["adapters"] = load.adapters = sources.adapters_as_list(data["adapters"])
            load.merged = dict(data)
            data.pop("adapters", None)
        return data

    @field_validator("topics")
    @classmethod
    def _topic_keys(cls, topics: dict[str, str]) -> dict[str, str]:
        for key in topics:
            if not TOPIC_KEY.match(key):
                raise ValueError(f"topic key {key!r} must be lower-case letters, digits, '_', '.' or '-'")
        return topics

    def adapter(self, name: str) -> AdapterSettings:
        """The settings of the adapter called `name`; ConfigError if there is none."""
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        raise ConfigError(f"no adapter named {name!r}; configured: {', '.join(a.name for a in self.adapters) or 'none'}")

    def unmapped_policy(self, adapter: AdapterSettings) -> str:
        """The adapter's unmapped-topic policy, else the engine-wide one."""
        return adapter.unmapped_topics or self.sync.unmapped_topics

    def resubscribe_policy(self, adapter: AdapterSettings) -> str:
        """The adapter's `recipient_resubscribe`, else the engine-wide one."""
        return adapter.recipient_resubscribe or self.sync.recipient_resubscribe


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """The settings file to use: --config, else OPTOUT_SYNC_CONFIG, else ./settings.toml."""
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


# Command-line options that are settings: option -> (section, key).
CLI_OPTIONS = {"--log-format": ("logging", "format"), "--show-addresses": ("logging", "show_addresses")}


def load_settings(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                  cli: Mapping[str, Any] | None = None) -> Settings:
    """Read, merge and validate the settings; ConfigError with a precise message otherwise.

    `cli` holds the command-line options that are settings and were given, {"--log-format": "json"}.
    """
    return load_with_origins(explicit, environ, cli)[0]


def load_with_origins(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                      cli: Mapping[str, Any] | None = None) -> tuple[Settings, sources.Load]:
    """`load_settings()`, and the load that says where each value came from (for `optout-sync config`)."""
    environ = os.environ if environ is None else environ
    named_by = "--config" if explicit else CONFIG_ENV if environ.get(CONFIG_ENV) else None
    load = sources.Load(config_path(explicit, environ), environ, named_by)
    for option, value in (cli or {}).items():
        section, key = CLI_OPTIONS[option]
        load.cli.setdefault(section, {})[key] = value
        load.origins[(section, key)] = sources.Origin("command_line", option)
    return _validate(load), load


def validate_settings(raw: dict[str, Any], path: Path, origins: Mapping[tuple, str] | None = None) -> Settings:
    """Validate a raw settings mapping that came from `path` (no environment, no file is read).

    `origins` maps a raw key location (("logging", "level"), ("adapters", 0, "interval"))
    to the environment variable that set it, so a bad value is blamed on that variable.
    """
    load = sources.Load(Path(path), {}, raw=dict(raw))
    load.origins.update({location: sources.Origin("environment", variable)
                         for location, variable in (origins or {}).items()})
    return _validate(load)


def _validate(load: sources.Load) -> Settings:
    """Build `Settings` from the load's sources, then each adapter by its type; one ConfigError for all problems."""
    context = {"base_dir": load.base_dir}
    problems: list[str] = []
    token = sources.LOADING.set(load)
    try:
        values = dict(load.raw) if load.raw is not None else load.cli
        if load.raw is not None and "adapters" not in values:
            load.adapters = []
        try:
            settings = Settings.model_validate(values, context=context) if load.raw is not None else \
                Settings(**values)
        except ValidationError as exc:
            problems.extend(_describe(exc, (), load))
            settings = None
    finally:
        sources.LOADING.reset(token)
    adapters_raw = [] if load.adapters is None else load.adapters
    adapters: list[AdapterSettings] = []
    if not isinstance(adapters_raw, list):
        problems.append(_blame("key 'adapters': expected a list of [[adapters]] tables", ("adapters",), load))
        adapters_raw = []
    for index, item in enumerate(adapters_raw):
        label = f"adapters[{index}]"
        if not isinstance(item, dict):
            problems.append(_blame(f"key '{label}': expected a table", ("adapters", index), load))
            continue
        if isinstance(item.get("name"), str):
            label = f"adapters[{index}] ({item['name']})"
        type_name = item.get("type")
        if type_name not in registry.ADAPTER_TYPES:
            known = ", ".join(sorted(registry.ADAPTER_TYPES))
            problems.append(_blame(f"key '{label}.type': expected one of {known}, got {type_name!r}",
                                   ("adapters", index, "type"), load, exact=True))
            continue
        try:
            adapters.append(registry.settings_model(type_name).model_validate(item, context=context))
        except ValidationError as exc:
            problems.extend(_describe(exc, (label,), load, ("adapters", index)))
    if settings is not None:
        problems.extend(_store_problems(settings.store, load))
        problems.extend(_cross_check(settings.topics, adapters))
    if problems:
        from_env = sum(1 for line in problems if line.startswith("environment variable "))
        where = (f"{load.path}: invalid settings" if not from_env else "invalid settings in the environment"
                 if from_env == len(problems) else f"invalid settings in {load.path} and the environment")
        raise ConfigError(f"{where}:\n  " + "\n  ".join(problems))
    settings.adapters = adapters
    settings.source = load.path
    # The store and log paths are anchored here, beside the adapters' (validated with a context).
    base = context["base_dir"]
    settings.store.path = base / settings.store.path
    if settings.logging.file is not None:
        settings.logging.file = base / settings.logging.file
    return settings


def _variable(location: tuple, load: sources.Load, exact: bool = False) -> str | None:
    """The environment variable that set `location`, a table around it, or (for an unknown table) a key inside it."""
    envs = {k: o.name for k, o in load.origins.items() if o.kind == "environment"}
    if exact:
        return envs.get(location)
    return next((envs[location[:n]] for n in range(len(location), 0, -1) if location[:n] in envs),
                None) or next((v for k, v in envs.items() if location and k[:len(location)] == location), None)


def _blame(line: str, location: tuple, load: sources.Load, exact: bool = False) -> str:
    variable = _variable(location, load, exact)
    return f"environment variable {variable} sets {line}" if variable else line


URL_SCHEMES = ("postgresql://", "postgres://")


def _store_problems(store: StoreSettings, load: sources.Load) -> list[str]:
    """[store]: path, or url, or url_file (read here); each problem names its key, never the URL's text."""
    problems = []
    given = store.model_fields_set
    if store.url is not None and store.url_file is not None:
        problems.append(_blame("key 'store.url_file': give the store's URL once, as url or as url_file, "
                               "not both", ("store", "url_file"), load, exact=True))
    if (store.url is not None or store.url_file is not None) and "path" in given:
        problems.append(_blame("key 'store.path': give either path (a SQLite store) or url/url_file "
                               "(a PostgreSQL store), not both", ("store", "path"), load, exact=True))
    if problems:
        return problems
    key = "url"
    if store.url_file is not None:
        key = "url_file"
        store.url_file = load.base_dir / store.url_file  # relative to the settings file, as `path` is
        try:
            text = store.url_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return [_blame(f"key 'store.url_file': cannot read {store.url_file}: {exc.strerror}",
                           ("store", "url_file"), load, exact=True)]
        except UnicodeDecodeError:
            return [_blame(f"key 'store.url_file': {store.url_file} is not UTF-8 text",
                           ("store", "url_file"), load, exact=True)]
        if not text:
            return [_blame(f"key 'store.url_file': {store.url_file} is empty; put the store's postgresql:// URL "
                           "in it", ("store", "url_file"), load, exact=True)]
        store.url = SecretStr(text)
        load.record(("store", "url"), sources.Origin("secret_file", str(store.url_file),
                                                     via=load.origin(("store", "url_file"))))
    if store.url is None:
        return []
    text = store.url.get_secret_value().strip()
    where = f"the URL in {store.url_file}" if key == "url_file" else "the URL"
    if not text:
        return [_blame("key 'store.url': is empty; give a postgresql://user@host:port/dbname URL",
                       ("store", key), load, exact=True)]
    if not text.lower().startswith(URL_SCHEMES):
        # The text is not quoted: a URL may hold a password.
        return [_blame(f"key 'store.{key}': {where} must start with postgresql:// (or postgres://); "
                       "it is not shown, as it may hold a password", ("store", key), load, exact=True)]
    store.url = SecretStr(text)
    return []


def _cross_check(topics: dict[str, str], adapters: list[AdapterSettings]) -> list[str]:
    problems, names = [], set()
    for adapter in adapters:
        if adapter.name in names:
            problems.append(f"key 'adapters' ({adapter.name}): the name {adapter.name!r} is used twice")
        names.add(adapter.name)
        for topic in adapter.topics:
            if topic not in topics:
                problems.append(f"key 'adapters' ({adapter.name}).topics.{topic}: topic {topic!r} is not "
                                f"defined under [topics] (defined: {', '.join(sorted(topics)) or 'none'})")
        scope = getattr(adapter, "scope", None)
        if scope is not None and scope != "*" and scope not in topics:
            problems.append(f"key 'adapters' ({adapter.name}).scope: topic {scope!r} is not defined under [topics]")
    return problems


def _describe(exc: ValidationError, prefix: tuple[str, ...], load: sources.Load, raw_prefix: tuple = ()) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join((*prefix, *(str(part) for part in error["loc"]))) or "(top level)"
        if error["type"] == "extra_forbidden":
            line = f"key '{key}': unknown key"
        elif error["type"] == "missing":
            line = f"key '{key}': required, but missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
            shown = ("" if isinstance(error.get("input"), (dict, list)) or ", got " in message
                     else f", got {error.get('input')!r}")
            line = f"key '{key}': {message}{shown}"
        location = (*raw_prefix, *error["loc"])
        variable = _variable(location, load)
        if variable is not None:
            line = f"environment variable {variable} sets {line}"
            if error["type"] == "extra_forbidden" and len(location) == 1:
                line += _separator_hint(str(location[0]), variable)
        lines.append(line)
    return lines


def _separator_hint(key: str, variable: str) -> str:
    """For OPTOUT_SYNC_LOGGING_LEVEL (one `_` where `__` belongs): the variable that was meant."""
    for section in Settings.model_fields:
        if section != "source" and key.startswith(section + "_"):
            rest = variable[len(ENV_PREFIX) + len(section) + 1:]
            return (f"; section and key are separated by '__': did you mean "
                    f"{ENV_PREFIX}{section.upper()}__{rest}?")
    return ""


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], path: Path) -> dict[tuple, str]:
    """Fold the OPTOUT_SYNC_* variables of `environ` into `raw` (a settings file's data), as a load would.

    Returns where each variable landed: {("a", "b", "c"): variable}, adapters by position.
    """
    load = sources.Load(Path(path), environ, preloaded=raw)
    token = sources.LOADING.set(load)
    try:
        Settings()  # the sources merge; the values are judged by load_settings(), not here
    except ValidationError:
        pass
    finally:
        sources.LOADING.reset(token)
    raw.clear()
    raw.update(load.merged)
    return {location: origin.name for location, origin in load.origins.items()}


def secret_file_warnings(settings: Settings) -> list[str]:
    """Warnings for a settings file that holds a secret and can be read by group or others."""
    path = settings.source
    if path is None or not path.exists():
        return []
    holds_secret = any(
        isinstance(getattr(adapter, name, None), SecretStr) and name in _file_keys(path, adapter.name)
        for adapter in settings.adapters for name in type(adapter).model_fields
    )
    mode = path.stat().st_mode
    if holds_secret and mode & (stat.S_IRGRP | stat.S_IROTH):
        return [f"{path} holds a secret and is readable by group or others (mode {oct(mode & 0o777)});"
                f" run: chmod 600 {path}"]
    return []


def _file_keys(path: Path, adapter_name: str) -> set[str]:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    for item in raw.get("adapters", []):
        if isinstance(item, dict) and item.get("name") == adapter_name:
            return set(item)
    return set()

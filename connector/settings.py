"""Settings: a TOML file, overridden by OPTOUT_SYNC_* environment variables, validated strictly.

The file is chosen by --config, else OPTOUT_SYNC_CONFIG, else ./settings.toml.
Relative paths are relative to the settings file. Unknown keys and bad values
stop the start with a message naming the file, the key and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from adapters import registry
from adapters.base import AdapterSettings, Duration, SettingsPath
from state.errors import ConfigError
from state.failpoint import ENV as FAILPOINT_ENV

ENV_PREFIX = "OPTOUT_SYNC_"
CONFIG_ENV = "OPTOUT_SYNC_CONFIG"
DEFAULT_CONFIG = "settings.toml"
TOPIC_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# The least stale_after when it is left unset: above the daemon's 5-minute cap on error
# back-off, and well below the default max_lag, so readiness fails before the lag alarm.
STALE_FLOOR = 900.0


class StoreSettings(BaseModel):
    """Where the SQLite store lives."""

    model_config = ConfigDict(extra="forbid")
    path: SettingsPath = Path("optout-sync.db")
    # How long a writer waits for another's transaction (a long import) before it fails and retries.
    busy_timeout: Duration = 30.0


class SyncSettings(BaseModel):
    """Engine-wide defaults."""

    model_config = ConfigDict(extra="forbid")
    unmapped_topics: Literal["skip", "global"] = "skip"


class LoggingSettings(BaseModel):
    """How the daemon logs."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["human", "json"] = "human"
    level: Literal["debug", "info", "warning", "error"] = "info"
    show_addresses: bool = False
    file: SettingsPath | None = None


class ServerSettings(BaseModel):
    """The optional local HTTP server: Prometheus metrics, health checks, status page; and the lag alarm.

    `listen` is "host:port" (IPv6 as "[::1]:9464"); unset, no server is started.
    `stale_after` unset means: per adapter, 3 x its interval but at least 15 minutes,
    so readiness fails well before `max_lag` and never for one backed-off failure.
    `max_lag` applies with or without the server: an older unapplied opt-out raises the lag alarm.
    """

    model_config = ConfigDict(extra="forbid")
    listen: str | None = None
    stale_after: Duration | None = None
    max_lag: Duration = 3600.0

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value

    @field_validator("stale_after", "max_lag")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive duration such as '30s', '15m' or '1h'")
        return value

    def stale_limit(self, interval: float) -> float:
        """Seconds without a successful cycle after which an adapter with this interval is not ready."""
        return self.stale_after if self.stale_after is not None else max(3 * interval, STALE_FLOOR)


def listen_address(value: str) -> tuple[str, int]:
    """(host, port) from "host:port" or "[v6 address]:port"; ValueError naming what is wrong."""
    host, colon, port_text = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("expected 'host:port' such as '127.0.0.1:9464' (port 0-65535)")
    return host, int(port_text)


class Settings(BaseModel):
    """Everything the daemon is configured with.

    A plain model: the loader below merges the file and the environment itself, since
    environment variables address adapters by name, which settings sources cannot express.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    store: StoreSettings = Field(default_factory=StoreSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    topics: dict[str, str] = Field(default_factory=dict)
    adapters: list[AdapterSettings] = Field(default_factory=list)
    source: Path | None = Field(default=None, exclude=True)

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


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """The settings file to use: --config, else OPTOUT_SYNC_CONFIG, else ./settings.toml."""
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(explicit: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the settings; ConfigError with a precise message otherwise."""
    environ = os.environ if environ is None else environ
    path = config_path(explicit, environ)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        # Say where the name came from: "give --config" is no help to someone who gave it.
        if explicit:
            raise ConfigError(f"{path}: the settings file given with --config does not exist") from None
        if environ.get(CONFIG_ENV):
            raise ConfigError(f"{path}: the settings file named by {CONFIG_ENV} does not exist") from None
        raise ConfigError(f"{path}: settings file not found (give --config or set {CONFIG_ENV})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a settings file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: settings file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    origins = apply_env_overrides(raw, environ, path)
    return validate_settings(raw, path, origins)


def validate_settings(raw: dict[str, Any], path: Path, origins: Mapping[tuple, str] | None = None) -> Settings:
    """Validate a raw settings mapping that came from `path`.

    `origins` maps a raw key location (("logging", "level"), ("adapters", 0, "interval"))
    to the environment variable that set it, so a bad value is blamed on that variable.
    """
    context = {"base_dir": path.resolve().parent}
    origins = origins or {}
    raw = dict(raw)
    adapters_raw = raw.pop("adapters", [])
    problems: list[str] = []
    try:
        settings = Settings.model_validate(raw, context=context)
    except ValidationError as exc:
        problems.extend(_describe(exc, (), origins))
        settings = None
    adapters: list[AdapterSettings] = []
    if not isinstance(adapters_raw, list):
        problems.append("key 'adapters': expected a list of [[adapters]] tables")
        adapters_raw = []
    for index, item in enumerate(adapters_raw):
        label = f"adapters[{index}]"
        if not isinstance(item, dict):
            problems.append(f"key '{label}': expected a table")
            continue
        if isinstance(item.get("name"), str):
            label = f"adapters[{index}] ({item['name']})"
        type_name = item.get("type")
        if type_name not in registry.ADAPTER_TYPES:
            known = ", ".join(sorted(registry.ADAPTER_TYPES))
            line = f"key '{label}.type': expected one of {known}, got {type_name!r}"
            variable = origins.get(("adapters", index, "type"))
            problems.append(f"environment variable {variable} sets {line}" if variable else line)
            continue
        try:
            adapters.append(registry.settings_model(type_name).model_validate(item, context=context))
        except ValidationError as exc:
            problems.extend(_describe(exc, (label,), origins, ("adapters", index)))
    if settings is not None:
        problems.extend(_cross_check(settings.topics, adapters))
    if problems:
        from_env = sum(1 for line in problems if line.startswith("environment variable "))
        where = (f"{path}: invalid settings" if not from_env else "invalid settings in the environment"
                 if from_env == len(problems) else f"invalid settings in {path} and the environment")
        raise ConfigError(f"{where}:\n  " + "\n  ".join(problems))
    settings.adapters = adapters
    settings.source = path
    # The store and log paths are anchored here, beside the adapters' (validated with a context).
    base = context["base_dir"]
    settings.store.path = base / settings.store.path
    if settings.logging.file is not None:
        settings.logging.file = base / settings.logging.file
    return settings


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


def _describe(exc: ValidationError, prefix: tuple[str, ...], origins: Mapping[tuple, str],
              raw_prefix: tuple = ()) -> list[str]:
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
        # The variable that set this key, a table around it, or (for an unknown table) a key inside it.
        variable = next((origins[location[:n]] for n in range(len(location), 0, -1) if location[:n] in origins),
                        None) or next((v for k, v in origins.items() if location and k[:len(location)] == location),
                                      None)
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
    """Fold OPTOUT_SYNC_A__B__C=value into raw[a][b][c]; adapters are addressed by name or index.

    Values that look like JSON (numbers, booleans, lists, tables) are parsed as JSON.
    Returns where each variable landed: {("a", "b", "c"): variable}, adapters by index.
    """
    origins: dict[tuple, str] = {}
    for variable, value in sorted(environ.items()):
        # The test-only crash point (state/failpoint.py) shares the prefix but is never a setting.
        if not variable.startswith(ENV_PREFIX) or variable in (CONFIG_ENV, FAILPOINT_ENV):
            continue
        parts = [p.lower() for p in variable[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node: Any = raw
        location: list = []
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                index = _adapter_by_name(node, part, variable, path)
                node = node[index]
                location.append(index)
                continue
            if part not in node:
                node[part] = [] if part == "adapters" and depth == 0 else {}
            node = node[part]
            location.append(part)
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"environment variable {variable} sets inside "
                                  f"'{part}', which is not a table (in {path})")
        if isinstance(node, list):
            raise ConfigError(f"environment variable {variable} must name a key inside an adapter")
        node[parts[-1]] = _env_value(value)
        origins[(*location, parts[-1])] = variable
    return origins


def _adapter_by_name(adapters: list, part: str, variable: str, path: Path) -> int:
    if part.isdigit() and int(part) < len(adapters):
        return int(part)
    wanted = part.replace("-", "_")
    for index, adapter in enumerate(adapters):
        if isinstance(adapter, dict) and str(adapter.get("name", "")).lower().replace("-", "_") == wanted:
            return index
    raise ConfigError(f"environment variable {variable} names adapter {part!r}, which is not configured in {path}")


def _env_value(value: str) -> Any:
    text = value.strip()
    if text[:1] in "[{" or text in ("true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", text):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


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

"""The sources `Settings` is built from, strongest first, each recording where every value came from.

1. command-line options (pydantic-settings' init kwargs, given by the CLI),
2. `OPTOUT_SYNC_<SECTION>__<KEY>` environment variables (`EnvironmentSource`),
3. `OPTOUT_SYNC_ADAPTERS__<NAME>__<KEY>`: adapters addressed by name (`AdapterEnvironmentSource`),
4. `<key>_file` secrets: the file's text for the secret key (`SecretFileSource`),
5. the TOML settings file (`SettingsFileSource`),
6. the models' defaults.

pydantic-settings deep-merges what the sources return. Adapters are a list in the file; the sources
hand them over as a table keyed by position ("0", "1", ...) so that a stronger source changes one
key of one adapter without replacing the list, and `Settings` turns the table back into the list.
Every source writes an `Origin` per key location into the load's `origins`, which is how an error
names the file and key or the variable, and how `optout-sync config` says where each value came from.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

from state.errors import ConfigError
from state.failpoint import ENV as FAILPOINT_ENV

# Test-only, never a setting: the stand-in for SNS's URLs (receiver/ses.py).
SNS_TEST_URLS_ENV = "OPTOUT_SYNC_TEST_SNS_URLS"

CONFIG_ENV = "OPTOUT_SYNC_CONFIG"


@dataclass(frozen=True)
class Origin:
    """Where one value came from: a command-line option, a variable, the file and key, a secret file, a default."""

    kind: str  # "command_line", "environment", "file", "secret_file" or "default"
    name: str = ""  # the option, the variable, or the file
    key: str = ""  # in the settings file: the key
    via: Origin | None = None  # a secret file: the key or variable that named it

    def describe(self) -> str:
        """'environment variable X', 'FILE, key K', 'secret file F (named by ...)', 'default'."""
        if self.kind == "command_line":
            return f"command-line option {self.name}"
        if self.kind == "environment":
            return f"environment variable {self.name}"
        if self.kind == "file":
            return f"{self.name}, key {self.key}"
        if self.kind == "secret_file":
            named_by = f" (named by {self.via.describe()})" if self.via else ""
            return f"secret file {self.name}{named_by}"
        return "default"

    def as_dict(self) -> dict[str, Any]:
        """The origin as JSON-ready data."""
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "command_line":
            data["option"] = self.name
        elif self.kind == "environment":
            data["variable"] = self.name
        elif self.kind in ("file", "secret_file"):
            data["file"] = self.name
        if self.key:
            data["key"] = self.key
        if self.via is not None:
            data["named_by"] = self.via.as_dict()
        return data


DEFAULT = Origin("default")
# The sources' order, strongest first (the file is read before the others, but is the weakest).
STRENGTH = {"command_line": 4, "environment": 3, "secret_file": 2, "file": 1, "default": 0}


@dataclass
class Load:
    """One loading of the settings: its inputs, and what the sources found out along the way."""

    path: Path
    environ: Mapping[str, str]
    named_by: str | None = None  # "--config", CONFIG_ENV or None (the default name): for "not found"
    raw: dict[str, Any] | None = None  # validate_settings(): exactly these values, no environment or file
    cli: dict[str, Any] = field(default_factory=dict)  # command-line values, as init kwargs
    cli_options: dict[tuple, str] = field(default_factory=dict)  # their locations -> option names
    origins: dict[tuple, Origin] = field(default_factory=dict)
    file_data: dict[str, Any] = field(default_factory=dict)
    preloaded: dict[str, Any] | None = None  # the file's data, already read
    merged: dict[str, Any] = field(default_factory=dict)  # what the sources gave, merged, before validation
    adapters: Any = None  # the merged adapters, taken out of the data before the sections are validated

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    def record(self, location: tuple, origin: Origin) -> None:
        """Note where the value at `location` came from, unless a stronger source set it."""
        held = self.origins.get(location)
        if held is None or STRENGTH[origin.kind] >= STRENGTH[held.kind]:
            self.origins[location] = origin

    def origin(self, location: tuple) -> Origin:
        """The origin of the value at `location`, or of the nearest table around it that has one."""
        for n in range(len(location), 0, -1):
            if location[:n] in self.origins:
                return self.origins[location[:n]]
        return DEFAULT


LOADING: ContextVar[Load | None] = ContextVar("optout_sync_settings_load", default=None)


def env_value(value: str) -> Any:
    """A variable's text, or what it means when it looks like JSON (a number, true/false, a list, a table)."""
    text = value.strip()
    if text[:1] in "[{" or text in ("true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", text):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def adapters_as_table(adapters: Any) -> Any:
    """[a, b] -> {"0": a, "1": b}, so that sources merge per adapter; anything else as it is (an error later)."""
    return {str(i): item for i, item in enumerate(adapters)} if isinstance(adapters, list) else adapters


def adapters_as_list(adapters: Any) -> Any:
    """The inverse of `adapters_as_table`."""
    if isinstance(adapters, dict) and all(isinstance(k, str) and k.isdigit() for k in adapters):
        return [adapters[k] for k in sorted(adapters, key=int)]
    return adapters


def _record_file(record: Any, path: Path, node: Any, location: tuple) -> None:
    if location:
        key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in location).replace(".[", "[")
        record(location, Origin("file", str(path), key))
    if isinstance(node, dict):
        for key, value in node.items():
            _record_file(record, path, value, (*location, key))
    elif isinstance(node, list) and location == ("adapters",):
        for index, value in enumerate(node):
            _record_file(record, path, value, (*location, index))


class SettingsFileSource(TomlConfigSettingsSource):
    """The TOML settings file, read with a precise message for every way it can fail, keys recorded."""

    def __init__(self, settings_cls: type[BaseSettings], load: Load):
        self.load = load
        super().__init__(settings_cls, toml_file=load.path)

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        data = self._read_file(self.load.path) if self.load.preloaded is None else self.load.preloaded
        _record_file(self.load.record, self.load.path, data, ())
        self.load.file_data = data
        return {**data, "adapters": adapters_as_table(data["adapters"])} if "adapters" in data else data

    def _read_file(self, path: Path) -> dict[str, Any]:
        try:
            return tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            # Say where the name came from: "give --config" is no help to someone who gave it.
            if self.load.named_by == "--config":
                raise ConfigError(f"{path}: the settings file given with --config does not exist") from None
            if self.load.named_by == CONFIG_ENV:
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


class _LoadSource(PydanticBaseSettingsSource):
    """A source that reads from the load (its environment, its file's data) rather than from fields."""

    def __init__(self, settings_cls: type[BaseSettings], load: Load):
        super().__init__(settings_cls)
        self.load = load
        self.prefix = str(self.config.get("env_prefix") or "")
        self.delimiter = str(self.config.get("env_nested_delimiter") or "__")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # not used: __call__ reads whole variables, not fields

    def variables(self) -> list[tuple[str, list[str], str]]:
        """(variable, lower-case parts after the prefix, value) for each setting variable, sorted."""
        found = []
        for variable, value in sorted(self.load.environ.items()):
            # The test-only crash point (state/failpoint.py) shares the prefix but is never a setting.
            if not variable.startswith(self.prefix) or variable in (CONFIG_ENV, FAILPOINT_ENV, SNS_TEST_URLS_ENV):
                continue
            parts = [p.lower() for p in variable[len(self.prefix):].split(self.delimiter) if p]
            if parts:
                found.append((variable, parts, value))
        return found


class EnvironmentSource(_LoadSource):
    """`OPTOUT_SYNC_<SECTION>__<KEY>=value`; values that look like JSON are parsed as JSON."""

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for variable, parts, value in self.variables():
            if parts[0] == "adapters" and len(parts) > 1:
                continue  # an adapter addressed by name: AdapterEnvironmentSource
            node = data
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"environment variable {variable} sets inside '{part}', which another "
                                      "variable sets to a value")
            node[parts[-1]] = env_value(value)
            if parts == ["adapters"]:
                node["adapters"] = adapters_as_table(node["adapters"])
            self.load.record(tuple(parts), Origin("environment", variable))
        return data


class AdapterEnvironmentSource(_LoadSource):
    """`OPTOUT_SYNC_ADAPTERS__<NAME>__<KEY>=value`: a key of the adapter of that name in the settings file.

    The name is case-insensitive, with `-` written as `_`; a position ("0") works too.
    """

    def __call__(self) -> dict[str, Any]:
        adapters: dict[str, Any] = {}
        listed = self.load.file_data.get("adapters", [])
        for variable, parts, value in self.variables():
            if parts[0] != "adapters" or len(parts) < 2:
                continue
            if len(parts) == 2:
                raise ConfigError(f"environment variable {variable} must name a key inside an adapter")
            index = self._adapter_by_name(listed, parts[1], variable)
            node = adapters.setdefault(str(index), {})
            for part in parts[2:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"environment variable {variable} sets inside '{part}', which another "
                                      "variable sets to a value")
            node[parts[-1]] = env_value(value)
            self.load.record(("adapters", index, *parts[2:]), Origin("environment", variable))
        return {"adapters": adapters} if adapters else {}

    def _adapter_by_name(self, adapters: Any, part: str, variable: str) -> int:
        adapters = adapters if isinstance(adapters, list) else []
        if part.isdigit() and int(part) < len(adapters):
            return int(part)
        wanted = part.replace("-", "_")
        for index, adapter in enumerate(adapters):
            if isinstance(adapter, dict) and str(adapter.get("name", "")).lower().replace("-", "_") == wanted:
                return index
        raise ConfigError(f"environment variable {variable} names adapter {part!r}, which is not configured "
                          f"in {self.load.path}")


class SecretFileSource(_LoadSource):
    """`<key>_file = "path"` (in the file or a variable) for a secret key: the text of that file, stripped.

    Below the environment (a variable giving the secret itself wins) and above the file (the file's
    text wins over a secret written in the settings file). A file that cannot be read, or is empty, is
    left to the adapter's settings model, which names the key and the problem.
    """

    def __call__(self) -> dict[str, Any]:
        # Only adapters hold secrets. The `<key>_file` keys of the file and of stronger sources:
        from adapters import registry
        from adapters.base import resolve_secret_file, secret_keys

        merged = self.current_state.get("adapters", {})
        listed = self.load.file_data.get("adapters", [])
        if not isinstance(listed, list):
            return {}
        found: dict[str, Any] = {}
        for index, item in enumerate(listed):
            if not isinstance(item, dict) or item.get("type") not in registry.ADAPTER_TYPES:
                continue
            stronger = merged.get(str(index), {}) if isinstance(merged, dict) else {}
            stronger = stronger if isinstance(stronger, dict) else {}
            try:
                model = registry.settings_model(item["type"])
            except Exception:  # noqa: BLE001 - an adapter type that cannot load is reported by validation
                continue
            for secret in secret_keys(model):
                key = f"{secret}_file"
                named = stronger.get(key, item.get(key))
                if named is None or stronger.get(secret):
                    continue
                text = resolve_secret_file(named, self.load.base_dir)
                if text is None:
                    continue  # unreadable or empty: the model's validator says so, naming the key
                found.setdefault(str(index), {})[secret] = text
                via = self.load.origin(("adapters", index, key))
                self.load.record(("adapters", index, secret),
                                 Origin("secret_file", str(_anchored(named, self.load.base_dir)), via=via))
        return {"adapters": found} if found else {}


def _anchored(path: Any, base: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else base / path

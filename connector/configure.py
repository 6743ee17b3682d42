"""Configuring without reading the whole manual: `optout-sync config` and `optout-sync init`.

`effective_settings` lists every setting in force with where it came from; `write_settings_file`
writes a commented settings file for the chosen adapter types, with their required keys, each
secret as `<key>_file` naming a new empty file (mode 0600, in a folder of mode 0700).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

from adapters import registry
from adapters.base import secret_keys
from state.errors import InputError, RefusedError

if TYPE_CHECKING:
    from .settings import Settings
    from .settings_sources import Load, Origin

SECRET_SHOWN = "***"
SECTIONS = ("store", "sync", "logging", "server", "webhooks")
# Without --adapter: the pair that needs no account anywhere (a watched folder in, one CSV out).
DEFAULT_ADAPTERS = [("csv_folder", "inbox"), ("csv_file", "suppression-list")]
SECRETS_FOLDER = "secrets"


# -- optout-sync config ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One setting in force: its key, its value as shown (secrets as ***), and where it came from."""

    key: str
    value: Any
    origin: Origin

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "origin": self.origin.as_dict()}

    def line(self) -> str:
        shown = self.value if self.value == SECRET_SHOWN else json.dumps(self.value)
        return f"{self.key} = {shown}  ({self.origin.describe()})"


def effective_settings(settings: Settings, load: Load) -> list[Entry]:
    """Every setting in force, with its origin: command line, variable, secret file, file and key, or default."""
    entries: list[Entry] = []
    for section in SECTIONS:
        model = getattr(settings, section)
        for name in type(model).model_fields:
            value = getattr(model, name)
            if (section, name) == ("store", "url") and value is not None:
                # The URL is worth seeing (host, database, user); only its password is secret.
                entries.append(Entry("store.url", masked_url(value.get_secret_value()), _origin(("store", "url"), load)))
                continue
            entries.append(_entry(f"{section}.{name}", value, (section, name), load))
    for key, value in settings.topics.items():
        entries.append(_entry(f"topics.{key}", value, ("topics", key), load))
    for index, adapter in enumerate(settings.adapters):
        for name in type(adapter).model_fields:
            value, location = getattr(adapter, name), ("adapters", index, name)
            if isinstance(value, dict) and value:
                entries.extend(_entry(f"adapters.{adapter.name}.{name}.{k}", v, (*location, k), load)
                               for k, v in value.items())
            else:
                entries.append(_entry(f"adapters.{adapter.name}.{name}", value, location, load))
    return entries


def masked_url(url: str) -> str:
    """A PostgreSQL URL with its password (in the authority or as password=...) replaced by ***."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:{SECRET_SHOWN}@{hosts}"
    # The password may also be a query parameter (postgresql://host/db?password=...).
    tail = re.sub(r"(^|[?&])password=[^&#]*", rf"\g<1>password={SECRET_SHOWN}", tail)
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _entry(key: str, value: Any, location: tuple, load: Load) -> Entry:
    return Entry(key, _shown(value), _origin(location, load))


def _shown(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return SECRET_SHOWN  # whatever it holds, wherever it came from
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    return value


def _origin(location: tuple, load: Load) -> Origin:
    from .settings_sources import DEFAULT

    if location in load.origins:
        return load.origins[location]
    # A value inside a table that one variable (or option) set as a whole, if that table holds it.
    for n in range(len(location) - 1, 0, -1):
        origin = load.origins.get(location[:n])
        if origin is not None and origin.kind != "file" and _given(load.merged, location):
            return origin
    return DEFAULT


def _given(data: Any, location: tuple) -> bool:
    for part in location:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


# -- optout-sync init ----------------------------------------------------------------------------------------


@dataclass
class InitReport:
    """What `init` wrote: the settings file and the empty secret files the operator fills."""

    path: Path
    adapters: list[tuple[str, str]]
    secret_files: list[Path] = field(default_factory=list)


def parse_adapter(spec: str) -> tuple[str, str]:
    """'hubspot:crm' -> ("hubspot", "crm"); 'sendgrid' -> ("sendgrid", "sendgrid"). InputError naming the types."""
    type_name, _, name = spec.partition(":")
    if type_name not in registry.ADAPTER_TYPES:
        raise InputError(f"--adapter {spec!r}: unknown type {type_name!r}; known: "
                         f"{', '.join(sorted(registry.ADAPTER_TYPES))}")
    name = name or type_name.replace("_", "-")
    field_info = registry.settings_model(type_name).model_fields["name"]
    pattern = next((m.pattern for m in field_info.metadata if hasattr(m, "pattern")), None)
    if pattern and not re.match(pattern, name):
        raise InputError(f"--adapter {spec!r}: the name {name!r} must be letters, digits, '_', '.' or '-'")
    return type_name, name


def write_settings_file(path: Path, specs: list[tuple[str, str]] | None = None) -> InitReport:
    """Write a commented settings file for `specs` (default: a csv_folder and a csv_file) and its secret files.

    Nothing is overwritten: an existing settings or secret file is a RefusedError, before anything is written.
    """
    specs = specs or list(DEFAULT_ADAPTERS)
    names = [name for _, name in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"--adapter: the name {twice[0]!r} is used twice; give TYPE:NAME")
    folder = path.resolve().parent
    secrets = [(type_name, name, key, Path(SECRETS_FOLDER) / f"{name}-{key}")
               for type_name, name in specs for key in _required_secrets(type_name)]
    for target in [path, *(folder / relative for *_, relative in secrets)]:
        if target.exists() or target.is_symlink():
            raise RefusedError(f"{target} exists; init never overwrites a file (remove it or choose another FILE)")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder for the settings file")
    text = _settings_text(specs)
    # The settings file first (exclusive create, so a file made meanwhile is not overwritten either).
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(text)
    report = InitReport(path, specs)
    if secrets:
        secret_dir = folder / SECRETS_FOLDER
        if not secret_dir.is_dir():
            secret_dir.mkdir(mode=0o700)
            os.chmod(secret_dir, 0o700)  # whatever the umask
        for *_, relative in secrets:
            target = folder / relative
            # Created empty with mode 0600 from the start: never readable by others, not even for a moment.
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.chmod(target, 0o600)  # whatever the umask
            report.secret_files.append(target)
    return report


def _required_secrets(type_name: str) -> list[str]:
    model = registry.settings_model(type_name)
    return [key for key in secret_keys(model) if model.model_fields[key].is_required()]


def _settings_text(specs: list[tuple[str, str]]) -> str:
    lines = [f"# optout-sync settings, written by `optout-sync init` on {date.today().isoformat()}.",
             "# Every setting, with what it does: settings.example.toml and the README (Configuration).",
             "# Relative paths are relative to this file. Check it with: optout-sync check",
             "", "[store]", "# The SQLite database that holds every opt-out and its history.",
             'path = "optout-sync.db"', "",
             "[topics]", '# One `key = "description"` per subscription type, if you use topics; map them in each',
             "# adapter's `topics` table (topic key = that system's own id).", ""]
    for type_name, name in specs:
        model = registry.settings_model(type_name)
        summary = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines += ["[[adapters]]"] + ([f"# {summary}"] if summary else [])
        lines += [f'name = "{name}"', f'type = "{type_name}"']
        secrets = secret_keys(model)
        for key, info in model.model_fields.items():
            if key in ("name", "type") or not info.is_required():
                continue
            if info.description:
                lines.append(f"# {info.description}")
            if key in secrets:
                lines.append("# Put it in this file (mode 0600, made by init), never in this one:")
                lines.append(f'{key}_file = "{SECRETS_FOLDER}/{name}-{key}"')
            else:
                example = (info.examples or [""])[0]
                lines.append(f"{key} = {json.dumps(str(example))}")
        lines.append("")
    return "\n".join(lines)

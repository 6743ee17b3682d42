"""The Adapter protocol, its capability declaration and the settings every adapter shares.

An adapter reads changes since a cursor, reads its full set, and applies a
batch of opt-outs, returning one result per item. It never touches the store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationInfo, field_validator,
                      model_validator)

from state.models import ApplyResult, OptOut, Page

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a text such as '500ms', '10s', '5m', '1h', '2d'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '10s', '5m' or '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30, '10s', '5m' or '1h', got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

# The shortest `interval` (and non-zero `reconcile_every`): a shorter one only makes a worker spin.
MIN_INTERVAL = 1.0


def resolve_path(value: Any, info: ValidationInfo) -> Any:
    """Make a relative path relative to the settings file's folder (passed as context)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        # str() would make a file name of anything: a list or a number is a mistake, not a path.
        raise ValueError(f"expected a path (text), got {type(value).__name__} {value!r}")
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir") if info.context else None
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


SettingsPath = Annotated[Path, BeforeValidator(resolve_path)]


def secret_keys(model: type[BaseModel]) -> list[str]:
    """The secret fields of a settings model (those that may be given as `<field>_file` instead)."""
    return [name for name, info in model.model_fields.items() if info.annotation in (SecretStr, SecretStr | None)]


def resolve_secret_file(path: Any, base: Path) -> str | None:
    """The stripped text of a secret file (relative to `base`); None if it cannot be read or is empty."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = Path(path).expanduser()
    try:
        text = (path if path.is_absolute() else base / path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most `size` items (vendor batch limits)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


class AdapterSettings(BaseModel):
    """Settings every adapter instance has; each adapter type adds its own keys.

    Any secret field (a `SecretStr`) can instead be given as `<field>_file`, the
    path of a file holding it.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    type: str
    role: Literal["read", "write", "both"] = "both"
    interval: Duration = 60.0
    max_new_per_cycle: int = Field(default=10_000, ge=1)
    reconcile_every: Duration = 86_400.0
    unmapped_topics: Literal["skip", "global"] | None = None
    # None: the engine-wide [sync] recipient_resubscribe.
    recipient_resubscribe: Literal["local", "everywhere", "ignore"] | None = None
    topics: dict[str, str] = Field(default_factory=dict)

    @field_validator("interval")
    @classmethod
    def _interval_floor(cls, value: float) -> float:
        if value < MIN_INTERVAL:
            raise ValueError(f"must be at least {MIN_INTERVAL:g} second (a shorter interval only spins)")
        return value

    @field_validator("reconcile_every")
    @classmethod
    def _reconcile_floor(cls, value: float) -> float:
        if 0 < value < MIN_INTERVAL:
            raise ValueError(f"must be 0 (never) or at least {MIN_INTERVAL:g} second")
        return value

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        secrets = secret_keys(cls)
        for key in [k for k in data if isinstance(k, str) and k.endswith("_file")]:
            secret = key[: -len("_file")]
            if secret not in secrets:
                continue
            path = resolve_path(data.pop(key), info)
            if data.get(secret):
                continue  # given directly (e.g. from the environment): that wins over the file
            try:
                data[secret] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{key}: cannot read {path}: {exc.strerror}") from None
            if not data[secret]:
                # An empty secret would only fail later, at the vendor, as a refused credential.
                raise ValueError(f"{key}: {path} is empty; put the {secret} in it")
        return data

    @property
    def reads(self) -> bool:
        return self.role in ("read", "both")

    @property
    def writes(self) -> bool:
        return self.role in ("write", "both")


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do: read changes, read all, apply, remove, and in what batch size.

    `scopes` are the topic keys it can represent besides all-email (`*`).
    """

    read_changes: bool
    read_all: bool
    write: bool
    remove: bool = False
    batch_size: int = 1000
    scopes: frozenset[str] = field(default_factory=frozenset)


class AdapterMemory:
    """Facts an adapter learnt about its vendor that should outlive the process (text keys and values).

    An adapter that wants one sets `self.memory = AdapterMemory()`. The engine fills
    it from the store before each cycle and saves what changed after it, so the
    adapter remembers (which endpoints its token may use, say) without touching the
    database. Without an engine (`check`, tests) it is just a dict for this process.
    """

    def __init__(self, values: Mapping[str, str] | None = None):
        self._values: dict[str, str] = dict(values or {})
        self._changed: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def set(self, key: str, value: str) -> None:
        """Remember `value` under `key` (saved after the cycle if it changed)."""
        if self._values.get(key) != value:
            self._values[key] = str(value)
            self._changed.add(key)

    def forget(self, key: str) -> None:
        """Drop `key` (deleted from the store after the cycle)."""
        if key in self._values:
            del self._values[key]
            self._changed.add(key)

    def load(self, stored: Mapping[str, str]) -> None:
        """Take the stored values; what changed here and is not saved yet stays as it is."""
        pending = self.unsaved()
        self._values = dict(stored)
        for key, value in pending.items():
            if value is None:
                self._values.pop(key, None)
            else:
                self._values[key] = value

    def unsaved(self) -> dict[str, str | None]:
        """Changed keys not saved yet, with their new values (None: forgotten)."""
        return {key: self._values.get(key) for key in self._changed}

    def mark_saved(self) -> None:
        """The store now holds every change."""
        self._changed.clear()


@runtime_checkable
class Adapter(Protocol):
    """One external system (or file) that holds opt-outs.

    A sink may also define `prepare()`, which the engine calls before each push
    (never in a dry run), even when nothing is pending.
    """

    settings_model: ClassVar[type[AdapterSettings]]
    name: str
    capabilities: Capabilities

    def read_changes(self, cursor: str | None) -> Iterator[Page]:
        """Pages of opt-outs recorded since `cursor` (None: from the beginning), each with its new cursor."""
        ...

    def read_all(self) -> Iterator[Page]:
        """The whole opt-out set, streamed in pages (for reconcile)."""
        ...

    def apply(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Suppress each opt-out of the batch (idempotently); one result per item, in order."""
        ...

    def remove(self, batch: list[OptOut]) -> list[ApplyResult]:
        """Remove suppressions (only for the audited lift); one result per item."""
        ...

    def check(self) -> list[str]:
        """Verify the adapter can work without changing anything; lines describing what was found."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...

"""Log events: one name and key-value fields, rendered for people or as JSON at the edge.

Addresses are masked by a processor (j***@example.com) unless the operator asks
to see them; secrets are never passed to a log call in the first place.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

LOGGER_NAME = "optout_sync"
# A local part does not start with a quote here: 'bo@x.io' in a message is a quoted address.
_ADDRESS = re.compile(r"([\w.!#$%&*+/=?^`{|}~-][\w.!#$%&'*+/=?^`{|}~-]*)@([\w-]+(?:\.[\w-]+)+)")


def mask_local(local: str) -> str:
    """The masked form of the part before the @: the one rule for every address shown.

    Four characters or more keep the first and become *** (jane -> j***); a shorter one
    becomes one * per character, so a mask never reveals a whole local part and is never
    longer than what it hides. Masking a masked text changes nothing.
    """
    return local[0] + "***" if len(local) >= 4 else "*" * len(local)


def mask_addresses(text: str) -> str:
    """Replace every address in a text by its masked local part (mask_local) and its domain."""
    return _ADDRESS.sub(lambda m: f"{mask_local(m.group(1))}@{m.group(2)}", text)


def mask_value(value: str) -> str:
    """An input value that may not be a valid address (a rejected row), masked as a whole.

    Everything before the last @ (or the whole value when it has none) is masked by the
    address rule, so 'a b@example.com' shows as '***@example.com', not as 'a b***@example.com'.
    """
    text = value.strip()
    local, at, domain = text.rpartition("@")
    return f"{mask_local(local)}@{domain}" if at else mask_local(text)


def mask_rejected(text: str, value: str | None) -> str:
    """A message about a rejected value with that value masked (mask_value), then every address.

    The value is replaced where the message quotes it ('value' or "value") and, when it holds an
    @, also where it stands bare; a short value without an @ is not replaced bare, since it could
    be any word of the message.
    """
    if value and value.strip():
        stripped = value.strip()
        masked = mask_value(value)
        for form in {repr(stripped), repr(value), f"'{stripped}'", f'"{stripped}"'}:
            text = text.replace(form, f"'{masked}'")
        if "@" in stripped:
            text = text.replace(value, masked).replace(stripped, masked)
    return mask_addresses(text)


class _EventFormatter(logging.Formatter):
    def __init__(self, as_json: bool, show_addresses: bool):
        super().__init__()
        self.as_json = as_json
        self.show_addresses = show_addresses

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        moment = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        if self.as_json:
            text = json.dumps({"ts": moment, "level": record.levelname.lower(), "event": record.getMessage(),
                               **fields}, default=str, ensure_ascii=False)
        else:
            pairs = " ".join(f"{key}={_human(value)}" for key, value in fields.items() if value is not None)
            text = f"{moment} {record.levelname:<7} {record.getMessage()} {pairs}".rstrip()
        return text if self.show_addresses else mask_addresses(text)


def _human(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text or "=" in text) else text


def setup_logging(fmt: str = "human", level: str = "info", show_addresses: bool = False,
                  stream: TextIO | None = None, file: Path | None = None) -> logging.Logger:
    """Configure the project's logger (stderr, and a file if given); return it."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = _EventFormatter(fmt == "json", show_addresses)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Reopens the file when logrotate moves it away, so the daemon never writes to the rotated copy.
        handlers.append(logging.handlers.WatchedFileHandler(file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with its fields."""
    logging.getLogger(LOGGER_NAME).log(level, event, extra={"fields": fields})

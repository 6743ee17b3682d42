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
_ADDRESS = re.compile(r"([\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]*@([\w-]+(?:\.[\w-]+)+)")


def mask_addresses(text: str) -> str:
    """Replace every address in a text by its first character, *** and its domain."""
    return _ADDRESS.sub(r"\1***@\2", text)


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

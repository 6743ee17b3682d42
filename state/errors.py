"""The project's one small exception hierarchy.

Raised where things happen, turned into exit codes and log events at the edges
(CLI, scheduler) only. Messages never contain secrets.
"""


class OptOutSyncError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(OptOutSyncError):
    """Settings are missing, malformed or inconsistent (exit code 2)."""


class InputError(OptOutSyncError):
    """Input supplied by a person or a file cannot be used as given."""


class RefusedError(OptOutSyncError):
    """A guarded action was refused: wrong confirmation count, forbidden lift (exit code 3)."""


class TransientError(OptOutSyncError):
    """May succeed if tried again later: timeouts, 5xx, 429, a locked database."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(OptOutSyncError):
    """Will fail the same way however often it is retried: a vendor refusal, bad credentials."""


class StoreError(OptOutSyncError):
    """The local store cannot be opened or written (read-only file, disk full, locked)."""

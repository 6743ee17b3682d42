"""The [logging] file follows logrotate: after the file is moved away, new lines go to a new file at the path."""

from __future__ import annotations

import logging

from connector.logs import LOGGER_NAME, log_event, setup_logging


def test_a_rotated_log_file_is_reopened_at_the_configured_path(tmp_path):
    path = tmp_path / "logs" / "optout-sync.log"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        _log_and_rotate(path, stderr)


def _log_and_rotate(path, stderr):
    setup_logging("json", "info", file=path, stream=stderr)
    try:
        log_event("before_rotation", adapter="inbox")
        rotated = path.with_name("optout-sync.log.1")
        path.rename(rotated)  # what logrotate does (without copytruncate)
        log_event("after_rotation", adapter="inbox")
        assert path.exists(), "no new file was opened at the configured path"
        assert "before_rotation" in rotated.read_text() and "after_rotation" not in rotated.read_text()
        assert "after_rotation" in path.read_text() and "before_rotation" not in path.read_text()
    finally:
        for handler in list(logging.getLogger(LOGGER_NAME).handlers):
            logging.getLogger(LOGGER_NAME).removeHandler(handler)
            handler.close()

"""This project's own log lines (`flows.*`), shown on stderr at a chosen level."""

from __future__ import annotations

import logging
import sys

PROJECT_LOGGER = "flows"


def show_project_logs(level: int) -> None:
    """Show the project's log lines at `level` and above on stderr (once per process)."""
    logger = logging.getLogger(PROJECT_LOGGER)
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def project_log_level() -> int:
    """The level set for the project's loggers (NOTSET when none was)."""
    return logging.getLogger(PROJECT_LOGGER).level

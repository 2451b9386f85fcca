"""This project's own log lines (`flows.*`), shown on stderr at a chosen level; and other
libraries' loggers kept quiet where their lines would only repeat what we report."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

PROJECT_LOGGER = "flows"


def show_project_logs(level: int) -> None:
    """Show the project's log lines at `level` and above on stderr (once per process;
    not passed on to the root logger, whose handler, Prefect's, would show them again)."""
    logger = logging.getLogger(PROJECT_LOGGER)
    logger.setLevel(level)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def project_log_level() -> int:
    """The level set for the project's loggers (NOTSET when none was)."""
    return logging.getLogger(PROJECT_LOGGER).level


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from the loggers `names` inside the block (their levels restored)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

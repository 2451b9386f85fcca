"""Waiting in the main thread so that Ctrl-C and SIGTERM are handled at once.

Python runs a signal's handler in the main thread, the next time that thread runs Python.
The kernel may hand a process's signal to any of its threads; when it picks another one, a
main thread blocked in a wait without end (a lock, `Future.result()`, `waitpid`) is not
woken, and the handler (which stops the run) would wait until that wait is over: for a
whole run, or a whole setup command. Waits of the main thread are therefore sliced.
"""

from __future__ import annotations

from concurrent.futures import Future, wait
from typing import TypeVar

T = TypeVar("T")

# How long the main thread waits before it runs Python again: the longest a signal's
# handler can be kept waiting.
SIGNAL_CHECK_S = 0.2


def result_of(future: Future[T]) -> T:
    """`future.result()`, waited for in slices (see the module docstring)."""
    while not future.done():
        wait([future], timeout=SIGNAL_CHECK_S)
    return future.result()

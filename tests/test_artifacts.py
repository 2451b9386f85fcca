"""ArtifactPublisher: what a flow run publishes arrives even when the API stumbles, and a
call that keeps failing is reported, never raised into the run."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx
import pytest

from flows import _prefect
from flows._prefect import ArtifactPublisher


class FlakyClient:
    """Records artifacts; the first `failures` creations (`update_failures` updates) raise
    as a busy server's would."""

    def __init__(
        self, failures: int = 0, block: threading.Event | None = None, update_failures: int = 0
    ):
        self.failures = failures
        self.update_failures = update_failures
        self.block = block
        self.created: list[Any] = []
        self.updated: list[Any] = []
        self.called = threading.Event()

    def create_artifact(self, artifact: Any) -> Any:
        self.called.set()
        if self.block is not None:
            self.block.wait()
        if self.failures:
            self.failures -= 1
            raise httpx.HTTPStatusError(
                "500 Internal Server Error (database is locked)",
                request=httpx.Request("POST", "http://127.0.0.1:1/api/artifacts/"),
                response=httpx.Response(500),
            )
        self.created.append(artifact)
        return SimpleNamespace(id=uuid4(), key=artifact.key)  # what the API answers

    def update_artifact(self, artifact_id: Any, update: Any) -> None:
        if self.update_failures:
            self.update_failures -= 1
            raise httpx.ReadTimeout("timed out")
        self.updated.append((artifact_id, update.data, update.description))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_prefect, "ARTIFACT_RETRY_DELAYS_S", (0.01, 0.01))


def test_an_artifact_call_that_fails_transiently_is_tried_again() -> None:
    client = FlakyClient(failures=2)
    publisher = ArtifactPublisher(uuid4(), client)  # type: ignore[arg-type]
    publisher.markdown("pipeline-demo-report", "# Report", "pipeline report: demo")
    publisher.close(timeout=10)
    assert [a.key for a in client.created] == ["pipeline-demo-report"]
    assert client.created[0].data == "# Report"


def test_a_failed_progress_update_is_tried_again_with_its_value() -> None:
    client = FlakyClient(update_failures=1)
    publisher = ArtifactPublisher(uuid4(), client)  # type: ignore[arg-type]
    publisher.start_progress("pipeline-demo-progress", "0/4 done")
    publisher.progress(100.0, "4/4 done")
    publisher.close(timeout=10)
    assert [a.key for a in client.created] == ["pipeline-demo-progress"]
    assert [(data, text) for _, data, text in client.updated] == [(100.0, "4/4 done")]


def test_progress_goes_at_most_once_a_second_and_its_last_value_at_once_at_the_end() -> None:
    """Units finishing many times a second cost one update a second; the run's end does
    not wait for the next second: its last value goes at once."""
    client = FlakyClient()
    publisher = ArtifactPublisher(uuid4(), client)  # type: ignore[arg-type]
    publisher.start_progress("pipeline-demo-progress", "0/3 done")
    publisher.progress(33.3, "1/3 done")
    deadline = time.monotonic() + 5
    while not client.updated and time.monotonic() < deadline:
        time.sleep(0.01)
    first_sent = time.monotonic()
    publisher.progress(66.7, "2/3 done")
    time.sleep(0.3)
    assert len(client.updated) == 1  # the next one waits for its second
    publisher.progress(100.0, "3/3 done")  # replaces the waiting value
    publisher.close(timeout=10)
    assert time.monotonic() - first_sent < _prefect.PROGRESS_INTERVAL_S
    assert [(data, text) for _, data, text in client.updated] == [
        (33.3, "1/3 done"), (100.0, "3/3 done")]  # fmt: skip


def test_a_call_that_keeps_failing_is_logged_and_the_next_ones_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flow_run_id = uuid4()
    client = FlakyClient(failures=3)  # every attempt of the first artifact
    publisher = ArtifactPublisher(flow_run_id, client)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger=_prefect.__name__):
        publisher.table("pipeline-demo-tier-1", [{"task": "lint"}], "tier 1")
        publisher.markdown("pipeline-demo-report", "# Report", "pipeline report: demo")
        publisher.close(timeout=10)
    assert [a.key for a in client.created] == ["pipeline-demo-report"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(flow_run_id) in warning and "HTTPStatusError" in warning, warning


def test_close_says_so_when_the_api_does_not_answer_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flow_run_id = uuid4()
    unblock = threading.Event()
    client = FlakyClient(block=unblock)
    publisher = ArtifactPublisher(flow_run_id, client)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger=_prefect.__name__):
        publisher.markdown("pipeline-demo-report", "# Report", "pipeline report: demo")
        publisher.close(timeout=0.2)
    unblock.set()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(flow_run_id) in warning and "did not answer within 0.2 s" in warning, warning


class WatchedEvent(threading.Event):
    """An Event that tells when someone starts waiting on it while it is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.held.set()
        return super().wait(timeout)


def test_deferred_calls_wait_for_close() -> None:
    """In a leader session the last calls of a run go after its flow run has ended."""
    unblock = threading.Event()
    client = FlakyClient(block=unblock)
    publisher = ArtifactPublisher(uuid4(), client)  # type: ignore[arg-type]
    publisher.table("pipeline-demo-tier-1", [{"task": "lint"}], "tier 1")
    assert client.called.wait(10)  # in flight
    sending = publisher._sending = WatchedEvent()  # read again before the next call
    sending.set()
    publisher.markdown("pipeline-demo-report", "# Report", "pipeline report: demo")
    publisher.defer()
    unblock.set()
    assert sending.held.wait(10)  # the report's call is held back, not sent
    assert [a.key for a in client.created] == ["pipeline-demo-tier-1"]
    publisher.close(timeout=10)
    assert [a.key for a in client.created] == ["pipeline-demo-tier-1", "pipeline-demo-report"]


def test_a_sessions_deferred_calls_go_when_told_without_closing() -> None:
    """A long monitor's polls: each one's artifacts reach the UI once it has ended, not
    when the whole session does."""
    client = FlakyClient()
    session = _prefect.LeaderSession(client)  # type: ignore[arg-type]
    first = ArtifactPublisher(uuid4(), client)  # type: ignore[arg-type]
    first._sending.clear()  # nothing goes before the run ends (as if sent in its last moment)
    first.markdown("fleet-demo-report", "# Report", "fleet report: demo")
    first.defer()  # the run ended
    session.publishers.append(first)
    time.sleep(0.2)
    assert not first.done and client.created == []  # held back

    session.send_deferred()

    first._thread.join(10)
    assert first.done and [a.key for a in client.created] == ["fleet-demo-report"]
    session.send_deferred()
    assert session.publishers == []  # done ones are let go

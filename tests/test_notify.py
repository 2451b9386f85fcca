"""Apprise notifications: the message that reaches a loopback JSON endpoint, the `on` filter,
delivery errors that never show the URL, and config errors that name the field."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flows._prefect import DEFAULT_UI_URL, flow_run_url, on_temporary_server
from flows.config import ConfigError, load_config
from flows.fleet.config import load_fleet_config
from flows.notify import Notifications, notify, render_body, render_title
from flows.report import Report, SetupSummary, Summary, UnitResult
from tests.conftest import run_cli, write_config

TOKEN = "t0k3n" * 5
GOOD_TASK = '{name: lint, priority: 1, run: "true"}'


class Endpoint:
    """A loopback HTTP server that records the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.paths: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                endpoint.paths.append(self.path)
                endpoint.messages.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    thread.join()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unit(name: str, status: str, exit_code: int | None = None) -> UnitResult:
    return UnitResult.model_validate(
        {"name": name, "priority": 1, "status": status, "exit_code": exit_code}
    )


def make_report(
    units: list[UnitResult], kind: str = "pipeline", cost: float | None = None
) -> Report:
    counts = {s: sum(u.status == s for u in units) for s in ("succeeded", "failed", "timed_out",
                                                              "skipped")}  # fmt: skip
    now = datetime.now(UTC)
    summary = Summary(total=len(units), **counts, success_rate=0.0, throughput_per_min=0.0,
                      speedup=0.0, efficiency=0.0, cost_usd=cost)  # fmt: skip
    return Report(kind=kind, name="sample-app", flow_run_id=None, started_at=now, ended_at=now,
                  wall_s=12.34, summary=summary, tiers=[], tasks=units,
                  setup=SetupSummary(cache_hit=True, duration_s=0.5))  # fmt: skip


def settings(*urls: str, on: list[str] | None = None, title: str | None = None) -> Notifications:
    data: dict[str, Any] = {"urls": list(urls), "title": title}
    if on is not None:
        data["on"] = on
    return Notifications.model_validate(data)


SUCCESS = make_report([unit(f"task-{n}", "succeeded") for n in range(11)])
FAILURE = make_report(
    [unit("lint", "failed", 1), unit("tests", "timed_out"), unit("build", "succeeded")],
    kind="fleet",
    cost=0.1234,
)


def test_success_message_arrives(endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    link = "http://127.0.0.1:4200/runs/flow-run/abc"
    assert notify(SUCCESS, settings(endpoint.url(f"hook/{TOKEN}")), link) == []
    assert endpoint.paths == [f"/hook/{TOKEN}"]
    assert TOKEN not in caplog.text  # neither apprise nor urllib3 logged the URL
    [message] = endpoint.messages
    assert message["title"] == "✅ pipeline sample-app: 11/11 succeeded"
    assert message["type"] == "success"
    assert "11/11 succeeded, 0 failed, 0 timed out, 0 skipped" in message["message"]
    assert "Wall time 12.3s" in message["message"] and link in message["message"]
    assert "cost" not in message["message"] and "Failed" not in message["message"]


def test_failure_message_lists_failed_units(endpoint: Endpoint) -> None:
    assert notify(FAILURE, settings(endpoint.url(), endpoint.url("second"))) == []
    assert endpoint.paths == ["/hook", "/second"]
    message = endpoint.messages[0]
    assert message["title"] == "❌ fleet sample-app: 1/3 succeeded, 1 failed, 1 timed out"
    assert message["type"] == "failure"
    body = message["message"]
    assert "cost $0.1234" in body
    assert "lint: ❌ failed (exit 1)" in body and "tests: ⏱️ timed_out" in body
    assert "build" not in body and "Prefect" not in body


def test_on_filters_outcomes(endpoint: Endpoint) -> None:
    assert notify(SUCCESS, settings(endpoint.url(), on=["failure"])) == []
    assert endpoint.messages == []
    assert notify(FAILURE, settings(endpoint.url(), on=["failure"])) == []
    assert len(endpoint.messages) == 1


def test_title_template(endpoint: Endpoint) -> None:
    template = "[{outcome}] {name}: {failed} failed of {total}"
    notify(FAILURE, settings(endpoint.url(), title=template))
    assert endpoint.messages[0]["title"] == "[failure] sample-app: 1 failed of 3"


def test_unreachable_url_returns_an_error_without_the_url(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    dead = f"json://user:{TOKEN}@127.0.0.1:{port}/hook/{TOKEN}"
    errors = notify(FAILURE, settings(endpoint.url(), dead, endpoint.url()))
    assert errors == [
        "notification 2 of 3 failed: the service could not be reached or refused the message"
    ]
    assert len(endpoint.messages) == 2  # the others were still sent
    assert TOKEN not in caplog.text and str(port) not in " ".join(errors)


def test_urls_are_secret() -> None:
    config = settings(f"json://user:{TOKEN}@127.0.0.1:1/hook")
    assert TOKEN not in repr(config) and TOKEN not in config.model_dump_json()


def test_render_mentions_a_failed_setup() -> None:
    report = FAILURE.model_copy(
        update={"setup": SetupSummary(cache_hit=False, duration_s=3.0, status="failed")}
    )
    assert "setup failed" in render_title(report)
    assert "Setup failed after 3.0s" in render_body(report)


@pytest.mark.parametrize(
    ("notifications", "field", "problem"),
    [
        ('{urls: ["json://127.0.0.1/x"], on: [sometimes]}', "notifications.on[0]",
         "Input should be 'success' or 'failure'"),
        ('{urls: ["json://127.0.0.1/x"], tittle: x}', "notifications.tittle", "unknown key"),
        ("{on: [failure]}", "notifications.urls", "required field is missing"),
        ("{urls: []}", "notifications.urls", "at least 1 item"),
        (f'{{urls: ["json://127.0.0.1/x", "nosuch://{TOKEN}"]}}', "notifications.urls",
         "entry 2 of 2 is not a URL Apprise supports"),
        (f'{{urls: "nosuch://{TOKEN}"}}', "notifications.urls",
         "entry 1 of 1 is not a URL Apprise supports"),
        ('{urls: ["json://127.0.0.1/x"], title: "{nme} done"}', "notifications.title",
         "unknown placeholder {nme}"),
        ('{urls: ["json://127.0.0.1/x"], title: "{name:d}"}', "notifications.title",
         "not a valid template"),
        ('{urls: ["json://127.0.0.1/x"], title: "{name:>{width}}"}', "notifications.title",
         "unknown placeholder {width}"),
    ],
)  # fmt: skip
def test_bad_notifications_name_the_field(
    tmp_path: Path, notifications: str, field: str, problem: str
) -> None:
    pipeline = write_config(
        tmp_path, f"name: x\ntasks: [{GOOD_TASK}]\nnotifications: {notifications}\n"
    )
    fleet = write_config(tmp_path, f"fleet:\n  notifications: {notifications}\n", "fleet.yml")
    cases = ((pipeline, load_config, ""), (fleet, lambda p: load_fleet_config(p, {}), "fleet."))
    for path, load, section in cases:
        with pytest.raises(ConfigError) as error:
            load(path)
        assert str(error.value).startswith(f"{path}: {section}{field}: ")
        assert problem in str(error.value)
        assert TOKEN not in str(error.value)


def test_notifications_in_yaml(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f"name: x\ntasks: [{GOOD_TASK}]\nnotifications:\n"
        "  urls: [json://127.0.0.1/x]\n  on: [failure]\n",  # a bare `on:` is YAML's true
    )
    config = load_config(path).notifications
    assert config is not None and config.on == ["failure"]
    assert load_fleet_config(None, {}).notifications is None


def test_pipeline_and_fleet_runs_notify_the_configured_endpoint(
    tmp_path: Path, endpoint: Endpoint, cli_env: dict[str, str]
) -> None:
    """The wiring: a run's own notifications section, end to end through the CLI; a
    failed delivery is told on the terminal."""
    dead = f"json://127.0.0.1:{closed_port()}/hook"
    config = write_config(tmp_path, f"""
        name: notified
        notifications:
          urls: ["{endpoint.url('pipeline')}", "{dead}"]
        tasks:
          - {{name: broken, priority: 1, run: "exit 3"}}
        """)  # fmt: skip
    result = run_cli(["pipeline", "--config", str(config)], cli_env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "notification 2 of 2 failed" in result.stdout + result.stderr
    fleet_config = write_config(tmp_path, f"""
        fleet:
          workspace: {tmp_path / "ws"}
          mock_issues: 1
          agent_seconds: 0.1
          notifications:
            urls: ["{endpoint.url('fleet')}"]
            on: [success]
        """, "fleet.yml")  # fmt: skip
    result = run_cli(["fleet", "--config", str(fleet_config)], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert endpoint.paths == ["/pipeline", "/fleet"]
    pipeline_message, fleet_message = endpoint.messages
    assert "pipeline notified" in pipeline_message["title"]
    assert "broken" in pipeline_message["message"]
    assert "/runs/flow-run/" in pipeline_message["message"]  # the UI link
    assert "fleet" in fleet_message["title"] and "1/1" in fleet_message["title"]


def test_a_run_on_the_temporary_server_is_linked_where_it_stays(prefect_server: str) -> None:
    """The CLI's temporary server (as the tests' own) stops with its process: a
    notification links the page `prefect server start` serves from the same database, and
    says so; the live link is the temporary server's."""
    ui = prefect_server.removesuffix("/api")
    assert on_temporary_server()
    assert flow_run_url("abc") == f"{ui}/runs/flow-run/abc"
    assert flow_run_url("abc", lasting=True) == f"{DEFAULT_UI_URL}/runs/flow-run/abc"
    body = render_body(SUCCESS, flow_run_url("abc", lasting=True), "`prefect server start`")
    assert body.endswith(
        f"[Open the run in Prefect]({DEFAULT_UI_URL}/runs/flow-run/abc) "
        "(after `prefect server start`)"
    )

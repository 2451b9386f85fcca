"""The Prefect UI of a finished pipeline run, in headless Chromium.

Runs a small pipeline through the CLI against the session's Prefect server, opens the
flow-run link the CLI prints, and checks what a user sees: the task runs carry their
matrix names (`p1 lint`) and the markdown report artifact renders as HTML. Screenshots go
to `tmp_path`; with `UPDATE_SCREENSHOTS=1` (or when they do not exist yet) they go to
`docs/`. `UI_TEST_CONFIG=examples/multi-agent-config.yml` runs another config instead of
the small one (that is how the screenshots in `docs/` were taken).

Skipped only when no Chromium is installed; Playwright drives the system's Chromium (it
never downloads a browser of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows._prefect import artifact_key
from tests.conftest import REPO, run_cli, write_config

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}
UI_TIMEOUT_MS = 30_000  # generous: the first load parses a large bundle, on a busy machine
DOCS = REPO / "docs"

SMALL_CONFIG = """
name: ui-check
tiers: {1: quality, 2: testing}
tasks:
  - {name: lint, priority: 1, run: "true"}
  - {name: typecheck, priority: 1, run: "python3 -c 'print(42)'"}
  - {name: unit-tests, priority: 2, run: "echo ok"}
"""


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """`docs/NAME` when asked to update (or missing), else a throwaway file."""
    target = DOCS / name
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not target.exists():
        target.parent.mkdir(exist_ok=True)
        return target
    return tmp_path / name


def full_page_screenshot(page: Any, path: Path) -> None:
    """The UI scrolls inside `.app-router-view`, not the document: grow the viewport to
    the content so the picture holds all of it."""
    height = page.evaluate(
        "() => (document.querySelector('.app-router-view') || document.documentElement)"
        ".scrollHeight"
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], height)})
    page.wait_for_timeout(300)  # let the layout and the run graph's canvas settle
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)


def wait_for_records(
    flow_run_id: str, task_runs: int, report_key: str, cli_output: str
) -> tuple[str, str]:
    """Wait until the server has every task run and the report artifact (events are
    ingested asynchronously); returns the flow run's name and the artifact's id."""
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flow_runs)
            artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=flow_runs)}
            terminal = [r for r in runs if r.state and r.state.is_final()]
            if len(terminal) >= task_runs and report_key in artifacts:
                flow_run = client.read_flow_run(UUID(flow_run_id))
                return flow_run.name, str(artifacts[report_key].id)
            assert time.monotonic() < deadline, (
                f"server recorded {len(terminal)}/{task_runs} task runs and artifacts "
                f"{sorted(map(str, artifacts))} of flow run {flow_run_id}; the CLI printed:\n"
                f"{cli_output}"
            )
            time.sleep(0.2)


@pytest.mark.skipif(
    chromium() is None, reason=f"no Chromium binary on PATH ({', '.join(CHROMIUM_NAMES)})"
)
@pytest.mark.timeout(300)
def test_flow_run_page_shows_matrix_names_and_rendered_report(
    tmp_path: Path, prefect_server: str, cli_env: dict[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = chromium()
    assert executable

    ui = prefect_server.removesuffix("/api")
    # Where the served UI sends its API calls (a clear message instead of a page that only
    # says "Can't connect to Server API").
    api_used = urljoin(f"{ui}/", httpx.get(f"{ui}/ui-settings", timeout=10).json()["api_url"])
    assert api_used.rstrip("/") == prefect_server, (
        f"the UI at {ui} talks to {api_used}, not to its own server's API {prefect_server}"
    )

    custom = os.environ.get("UI_TEST_CONFIG")
    config = (REPO / custom).resolve() if custom else write_config(tmp_path, SMALL_CONFIG)
    report_dir = tmp_path / "report"
    run = run_cli(["pipeline", "--config", str(config), "--report-dir", str(report_dir)], cli_env)
    assert run.returncode in ((0, 1) if custom else (0,)), run.stdout + run.stderr
    report = json.loads((report_dir / "report.json").read_text())
    flow_run_id = report["flow_run_id"]
    link = re.search(r"Prefect UI: (\S+)", run.stdout)
    assert link, run.stdout
    assert link.group(1) == f"{ui}/runs/flow-run/{flow_run_id}"

    ran = [task for task in report["tasks"] if task["attempts"] > 0]  # skipped units never ran
    names = [f"p{task['priority']} {task['name']}" for task in ran]
    setup_runs = 0 if report["setup"]["status"] == "none" else 1
    report_key = artifact_key(report["kind"], report["name"], "report")
    flow_run_name, artifact_id = wait_for_records(
        flow_run_id, len(ran) + setup_runs, report_key, run.stdout + run.stderr
    )

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)  # both closed with `playwright`
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            # The flow run's page, Task Runs tab: one entry per matrix entry.
            page.goto(link.group(1))
            expect(page.get_by_text(flow_run_name, exact=True).first).to_be_visible()
            page.locator(".p-tab", has_text=re.compile(r"^Task Runs$")).click()
            task_runs = page.locator("#task-runs-content")
            for name in names:
                expect(task_runs.get_by_role("link", name=name, exact=True)).to_be_visible()
            full_page_screenshot(page, screenshot_path("ui-flow-run.png", tmp_path))

            # Artifacts tab -> the markdown report's own page, rendered as HTML.
            page.locator(".p-tab", has_text=re.compile(r"^Artifacts$")).click()
            page.locator("#artifacts-content a", has_text=report_key).click()
            page.wait_for_url(f"**/artifacts/artifact/{artifact_id}")
            rendered = page.locator(".artifact-data-markdown")  # the description renders too
            title = f"{report['kind'].capitalize()} report: {report['name']}"
            expect(rendered.locator("h1")).to_have_text(title)
            for tier in report["tiers"]:
                heading = f"Tier {tier['priority']}: {tier['name']}"
                expect(rendered.locator("h2").filter(has_text=heading)).to_be_visible()
            expect(rendered.locator("td", has_text="success rate")).to_be_visible()
            for task in report["tasks"]:
                cell = re.compile(rf"^{re.escape(task['name'])}$")
                expect(rendered.locator("td").filter(has_text=cell)).to_be_visible()
            text = rendered.inner_text()
            assert "|---" not in text and not re.search(r"^#", text, re.MULTILINE), text
            full_page_screenshot(page, screenshot_path("ui-report-artifact.png", tmp_path))
        except BaseException:
            with contextlib.suppress(Exception):  # keep what the browser showed
                page.screenshot(path=str(tmp_path / "failure.png"))
            raise

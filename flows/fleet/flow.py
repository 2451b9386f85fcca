"""The fleet flow: ready issues -> parallel agent workers -> pull requests, on the same
leader as the pipeline. This module is the composition root: it builds the clients for a
mode and injects them; nothing below it reads tokens or creates clients."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import State, flow

from flows.config import ConfigError
from flows.fleet.agent import ClaudeModel, Model, load_system_prompt
from flows.fleet.config import FleetConfig, load_fleet_config
from flows.fleet.cost import UnknownModelError, price_for
from flows.fleet.models import Issue, IssueResult
from flows.fleet.simulated import SimulatedModel, fails
from flows.fleet.testbed import DEFAULT_BRANCH, ensure_remote, ensure_tracker
from flows.fleet.tracker import GitHubTracker, Labels, Tracker, TrackerError
from flows.fleet.worker import (
    FleetContext,
    IssueUnit,
    crashed_issue,
    resolve_issue,
    skipped_issue,
)
from flows.fleet.workspace import GitAuth, Mirror
from flows.leader import LeaderPlan, lead, report_state
from flows.report import SetupSummary
from flows.scheduler import build_tiers

DEFAULT_GITHUB_API = "https://api.github.com"


@dataclass(frozen=True)
class Connection:
    """What a mode provides: where issues come from, where code goes, who writes it."""

    tracker: Tracker
    clone_url: str
    default_branch: str
    auth: GitAuth
    name: str
    model_for: Any  # Callable[[Issue], Model]


def connect(settings: FleetConfig) -> Connection:
    """Build the clients of a mode; ConfigError for missing or bad input, before any work."""
    try:
        price_for(settings.model)
    except UnknownModelError as exc:
        raise ConfigError("fleet settings", "model", str(exc)) from None
    labels = _labels(settings)
    if settings.mode == "test":
        root = Path(settings.workspace)
        tracker = ensure_tracker(root, settings.mock_issues, labels)  # adds mock_issues more

        def simulated(issue: Issue) -> Model:
            return SimulatedModel(
                issue, settings.agent_seconds, fails(issue, settings.failure_rate)
            )

        return Connection(tracker, ensure_remote(root), DEFAULT_BRANCH, GitAuth(), "test",
                          simulated)  # fmt: skip
    return _connect_github(settings, labels)


def _connect_github(settings: FleetConfig, labels: Labels) -> Connection:
    import anthropic
    from github import Auth, Github

    if not settings.repo:
        raise ConfigError("fleet settings", "repo", "required in local mode (--repo OWNER/NAME)")
    token = os.environ.get("GITHUB_TOKEN")
    if not token:
        raise ConfigError("environment", "GITHUB_TOKEN", "not set (a token with repo access)")
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise ConfigError("environment", "ANTHROPIC_API_KEY", "not set")
    client = Github(base_url=os.environ.get("GITHUB_API_URL", DEFAULT_GITHUB_API),
                    auth=Auth.Token(token))  # fmt: skip
    try:
        tracker = GitHubTracker.connect(client, settings.repo, labels)
    except TrackerError as exc:
        raise ConfigError("fleet settings", "repo", str(exc)) from None
    claude = anthropic.Anthropic(max_retries=2)  # ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL

    def claude_model(issue: Issue) -> Model:
        return ClaudeModel(claude, settings.model)

    return Connection(tracker, tracker.clone_url, tracker.default_branch, GitAuth(token),
                      settings.repo, claude_model)  # fmt: skip


def _labels(settings: FleetConfig) -> Labels:
    names = settings.labels
    return Labels(names.ready, names.in_progress, names.review, names.failed)


def fleet_plan(
    settings: FleetConfig, connection: Connection, report_dir: Path
) -> LeaderPlan[IssueUnit, IssueResult]:
    """Poll the ready issues once and plan their resolution."""
    root = Path(settings.workspace).resolve()
    mirror = Mirror(root, connection.clone_url, connection.auth)
    prefix = settings.labels.priority_prefix
    units = [IssueUnit(issue, issue.priority(prefix)) for issue in connection.tracker.list_ready()]
    ctx = FleetContext(
        settings=settings.model_copy(update={"workspace": str(root)}),
        tracker=connection.tracker,
        mirror=mirror,
        default_branch=connection.default_branch,
        model_for=connection.model_for,
        system_prompt=load_system_prompt(),
        claimant=f"{socket.gethostname()}:{os.getpid()}",
        report_dir=report_dir,
    )

    def update_mirror() -> SetupSummary:
        started = time.perf_counter()
        existed = mirror.exists()
        mirror.ensure()
        return SetupSummary(cache_hit=existed, duration_s=round(time.perf_counter() - started, 3),
                            key=mirror.path.name, cache_dir=str(mirror.path))  # fmt: skip

    return LeaderPlan(
        kind="fleet",
        name=connection.name.replace("/", "-"),
        tiers=build_tiers(units, {1: "urgent", 2: "normal", 3: "low"}),
        work=lambda unit, worker: resolve_issue(unit, worker, ctx),
        skipped=skipped_issue,
        crashed=crashed_issue,
        max_parallel=settings.workers,
        report_dir=report_dir,
        setup=update_mirror if units else None,
        describe=lambda unit: f"#{unit.issue.number} {unit.issue.title}",
        tier_barriers=False,  # issues are independent: urgent first, but nobody waits
    )


def default_report_dir(settings: FleetConfig) -> Path:
    return Path(settings.workspace) / ".fleet" / "report"


@flow(name="fleet", persist_result=False)
def fleet(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    report_dir: str | None = None,
) -> State[Any]:
    """One poll: claim the ready issues and resolve them with parallel agents."""
    settings = load_fleet_config(Path(config_path) if config_path else None, overrides or {})
    connection = connect(settings)
    target = Path(report_dir) if report_dir else default_report_dir(settings)
    return report_state(lead(fleet_plan(settings, connection, target.resolve())))

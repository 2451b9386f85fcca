"""The clients of a mode: where issues come from, where code goes, who writes it.

`open_connection` builds them from settings and already resolved credentials, without
Prefect: the leader calls it once per run (through `flow.connect`, which resolves the
credentials from blocks or the environment), and so does each issue process (see
processes.py), which must not import Prefect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flows.config import ConfigError
from flows.fleet.agent import Model, load_system_prompt
from flows.fleet.config import FleetConfig, LabelNames
from flows.fleet.cost import Price, UnknownModelError, price_for
from flows.fleet.github_tracker import GitHubTracker
from flows.fleet.models import Issue
from flows.fleet.simulated import SimulatedModel, fails
from flows.fleet.testbed import (
    DEFAULT_BRANCH,
    ensure_remote,
    ensure_tracker,
    load_mock_issues,
    open_tracker,
    remote_path,
    testbed_source,
)
from flows.fleet.tracker import Labels, Tracker, TrackerError
from flows.fleet.worker import FleetContext
from flows.fleet.workspace import GitAuth, Mirror
from flows.leftovers import new_marker
from flows.logs import quiet_loggers


@dataclass(frozen=True)
class FleetCredentials:
    """What the fleet needs to reach GitHub and Claude; secrets stay `SecretStr`."""

    repo: str
    github_token: SecretStr
    github_api_url: str
    labels: LabelNames
    anthropic_api_key: SecretStr
    anthropic_base_url: str | None
    model: str
    max_tokens: int
    max_turns: int
    budget_usd_per_issue: float
    prices: Mapping[str, Price]  # the agent block's, or the config's (environment)
    github_source: str  # "block fleet-github/NAME" or "environment"
    agent_source: str  # "block fleet-agent/NAME" or "environment"

    def apply(self, settings: FleetConfig) -> FleetConfig:
        """The settings with the repository, labels and model settings resolved here; the
        prices merged, these over the config's for the same model."""
        return settings.model_copy(
            update={
                "repo": self.repo,
                "labels": self.labels,
                "model": self.model,
                "max_tokens": self.max_tokens,
                "max_turns": self.max_turns,
                "budget_usd_per_issue": self.budget_usd_per_issue,
                "prices": {**settings.prices, **self.prices},
            }
        )


@dataclass(frozen=True)
class Connection:
    """What a mode provides, and the settings in effect (the blocks' values applied)."""

    settings: FleetConfig
    credentials: FleetCredentials | None  # None: the testbed (test mode, or `simulate`)
    tracker: Tracker
    clone_url: str
    default_branch: str
    auth: GitAuth
    name: str
    source: str  # names the issue source in run tags and idempotency keys
    model_for: Any  # Callable[[Issue], Model]
    closers: tuple[Callable[[], None], ...] = ()  # of the clients' connection pools

    def close(self) -> None:
        """Close the clients' connections (GitHub's, Claude's)."""
        for close in self.closers:
            close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_connection(
    settings: FleetConfig, credentials: FleetCredentials | None, *, seed: bool = True
) -> Connection:
    """The clients for `settings`: the testbed when `credentials` is None, else GitHub and
    Claude. `seed`: the testbed gets `settings.mock_issues` new issues and its remote is
    tidied (the leader's call; an issue process opens what is there). ConfigError for bad
    input, before any work."""
    if credentials is not None:
        settings = credentials.apply(settings)
    try:
        price_for(settings.model, settings.prices)
    except UnknownModelError as exc:
        raise ConfigError("fleet settings", "model", str(exc)) from None
    labels = labels_of(settings)
    if credentials is not None:
        return _open_github(settings, labels, credentials)
    root = Path(settings.workspace).resolve()
    if seed:
        from_file = (
            load_mock_issues(Path(settings.mock_issues_file)) if settings.mock_issues_file else []
        )
        tracker: Tracker = ensure_tracker(root, settings.mock_issues, labels, from_file)
        clone_url = ensure_remote(root)
    else:
        tracker, clone_url = open_tracker(root, labels), str(remote_path(root))
    agent_seconds, failure_rate = settings.agent_seconds, settings.failure_rate

    def simulated(issue: Issue) -> Model:
        return SimulatedModel(issue, agent_seconds, fails(issue, failure_rate))

    return Connection(settings, None, tracker, clone_url, DEFAULT_BRANCH, GitAuth(), "test",
                      testbed_source(root), simulated)  # fmt: skip


def _open_github(
    settings: FleetConfig, labels: Labels, credentials: FleetCredentials
) -> Connection:
    from github import Auth, Github

    from flows.fleet.claude import ClaudeModel, StoppableAnthropic

    token = credentials.github_token.get_secret_value()
    # GitHub's largest page (PyGithub asks for 30): fewer requests for every list
    client = Github(base_url=credentials.github_api_url, auth=Auth.Token(token), per_page=100)
    try:
        with quiet_loggers("urllib3.connectionpool"):  # a line per retry; the error says it
            tracker = GitHubTracker.connect(client, credentials.repo, labels)
    except TrackerError as exc:
        where = f"GitHub at {credentials.github_api_url}"
        raise ConfigError(where, "repo", str(exc)) from None
    claude = StoppableAnthropic(
        api_key=credentials.anthropic_api_key.get_secret_value(),
        base_url=credentials.anthropic_base_url,
        max_retries=2,
    )
    model = settings.model

    def claude_model(issue: Issue) -> Model:
        return ClaudeModel(claude, model)

    return Connection(settings, credentials, tracker, tracker.clone_url, tracker.default_branch,
                      GitAuth(token), credentials.repo, tracker.full_name,
                      claude_model, closers=(client.close, claude.close))  # fmt: skip


def labels_of(settings: FleetConfig) -> Labels:
    names = settings.labels
    return Labels(names.ready, names.in_progress, names.review, names.failed)


def fleet_context(
    connection: Connection,
    report_dir: Path,
    claimant: str,
    heartbeat: Callable[[str, str, float], None],
    marker: str | None = None,
) -> FleetContext:
    """What every worker of one run shares; the workspace root made absolute. `marker`:
    the run's (flows/leftovers.py), when its issue processes share it; by default a new one."""
    settings = connection.settings
    root = Path(settings.workspace).resolve()
    return FleetContext(
        settings=settings.model_copy(update={"workspace": str(root)}),
        tracker=connection.tracker,
        mirror=Mirror(root, connection.clone_url, connection.auth),
        default_branch=connection.default_branch,
        model_for=connection.model_for,
        system_prompt=load_system_prompt(),
        claimant=claimant,
        report_dir=report_dir,
        heartbeat=heartbeat,
        marker=marker or new_marker(),
    )

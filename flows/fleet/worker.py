"""A fleet worker: one issue from claim to pull request.

claim -> workspace on ai-feature/issue-N -> agent -> the repository's checks -> revise (up
to max_revisions) -> commit, push, pull request -> labels. Every failure fails only this
issue: it is labelled ai-failed with a comment saying why, and its workspace is kept for
inspection unless configured otherwise.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flows.commands import RunStop, read_tail
from flows.config import ConfigError, load_config
from flows.fleet.agent import AgentError, Model, build_task_prompt, run_agent
from flows.fleet.config import FleetConfig
from flows.fleet.cost import CostMeter
from flows.fleet.models import AgentResult, Issue, IssueResult, PullRequest
from flows.fleet.tools import Toolbox, scrubbed_env
from flows.fleet.tracker import Tracker, TrackerError
from flows.fleet.workspace import Mirror, Workspace, WorkspaceError, prepare_workspace
from flows.leftovers import (
    MARKER_VAR,
    end_leftovers,
    ending_leftovers,
    last_pid,
    marked,
    new_marker,
)
from flows.pipeline.matrix import build_matrix
from flows.pipeline.setup import cache_env, cache_in_use, plan_setup, run_setup
from flows.pipeline.worker import WorkerContext, run_task
from flows.report import Status

logger = logging.getLogger(__name__)
# The reason a run's stop gives when its flow run was cancelled (in the Prefect UI, say):
# its issue is failed, not put back in the queue for the next poll to start again.
CANCELLED = "the run was cancelled"


@dataclass(frozen=True)
class IssueUnit:
    """An issue as a leader work unit: its priority label is its tier."""

    issue: Issue
    priority: int
    continue_on_error: bool = True

    @property
    def name(self) -> str:
        return self.issue.name


@dataclass(frozen=True)
class FleetContext:
    """What every worker of one fleet run shares (clients are injected here)."""

    settings: FleetConfig
    tracker: Tracker
    mirror: Mirror
    default_branch: str
    model_for: Callable[[Issue], Model]
    system_prompt: str
    claimant: str
    report_dir: Path
    author: tuple[str, str] = ("prefect-fleet", "fleet@localhost")
    sleep: Callable[[float], None] | None = None  # between retries; default: `stop.wait`
    # (worker, activity, cost of the issue so far): what status displays show live
    heartbeat: Callable[[str, str, float], None] = field(default=lambda *_: None)
    # the run was interrupted: agents stop (a model call is cut short), commands are killed
    stop: RunStop = field(default_factory=RunStop)
    # in the environment of every command of the run (flows/leftovers.py)
    marker: str = field(default_factory=new_marker)

    @property
    def root(self) -> Path:
        return Path(self.settings.workspace)

    def pause(self, seconds: float) -> None:
        (self.sleep or self.stop.wait)(seconds)


class _IssueLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.path = path

    def __call__(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(f"{datetime.now(UTC):%H:%M:%S} {line}\n")


def resolve_issue(unit: IssueUnit, worker: str, ctx: FleetContext) -> IssueResult:
    issue = unit.issue
    started = datetime.now(UTC)
    log_path = ctx.report_dir / "logs" / f"{issue.name}.log"
    if ctx.stop.reason is not None:  # not claimed: it stays in the queue
        return skipped_issue(unit, ctx.stop.reason)
    run = _IssueRun(issue, worker, ctx, CostMeter(ctx.settings.prices), _IssueLog(log_path))
    log, outcome = run.log, run.outcome
    with run.stage("claim"):
        claimed = ctx.tracker.claim(issue, f"{ctx.claimant}/{worker}")
    if not claimed:
        log(f"#{issue.number} was claimed by another worker or fleet: skipped")
        outcome.status = "skipped"
        return _result(run, unit, worker, started)
    workspace: Workspace | None = None
    try:
        with run.stage("workspace"):
            workspace = prepare_workspace(
                ctx.mirror, ctx.root, worker, issue.number, ctx.default_branch
            )
        log(f"workspace {workspace.path} on {workspace.branch}"
            + (" (continuing an earlier branch)" if workspace.resumed else ""))  # fmt: skip
        agent, checks = _implement(run, workspace)
        if agent.ok and checks.passed:  # done, even if the run was stopped meanwhile
            with run.stage("publish"):
                pull = _publish(run, workspace, agent, checks)
            outcome.pull_request = pull.url
            outcome.status = "succeeded"
            log(f"pull request {pull.url} ({'opened' if pull.created else 'updated'})")
            with run.stage("finish"):
                ctx.tracker.finish(issue, True, f"Pull request: {pull.url}")
        elif ctx.stop.reason is not None:
            _stopped(run, ctx.stop.reason)
        else:
            reason = agent.error if not agent.ok else f"checks still failing:\n{checks.report}"
            _fail(run, reason or "the agent gave up")
    except (WorkspaceError, TrackerError, OSError) as exc:
        _fail(run, f"{exc.__class__.__name__}: {exc}")
    except Exception as exc:  # a bug: the claimed issue is still labelled, not left stuck
        log(traceback.format_exc().rstrip())  # the details stay in the fleet's own log
        _fail(run, f"internal error ({exc.__class__.__name__}); see the fleet's log of it")
    finally:
        with run.stage("cleanup"):
            if ended := end_leftovers(run.marker, run.since):  # before the workspace goes
                log(f"ended what the issue's commands left running: {', '.join(map(str, ended))}")
            if workspace is not None and (
                outcome.status == "succeeded" or not ctx.settings.keep_failed_workspaces
            ):
                workspace.cleanup()
                with suppress(OSError):  # the worker's folder, once it holds nothing more
                    os.rmdir(workspace.path.parent)
    return _result(run, unit, worker, started)


@dataclass
class _Outcome:
    status: Status = "failed"
    attempts: int = 0
    pull_request: str | None = None
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage of the issue (added up when it runs more than once)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.stages[name] = round(self.stages.get(name, 0.0) + elapsed, 4)


@dataclass(frozen=True)
class _IssueRun:
    """What the stages of one issue share."""

    issue: Issue
    worker: str
    ctx: FleetContext
    meter: CostMeter
    log: _IssueLog
    outcome: _Outcome = field(default_factory=_Outcome)
    marker: str = field(default_factory=new_marker)  # the issue's, beside the run's
    since: int | None = field(default_factory=last_pid)  # (see flows/leftovers.py)

    def command_env(self) -> dict[str, str]:
        """What the issue's commands get added to their environment: the markers by which
        what they leave running is found when the issue (or its run) ends."""
        outer = {MARKER_VAR: os.environ.get(MARKER_VAR, "")}  # a run that runs this one
        return marked(outer, self.ctx.marker, self.marker)

    def beat(self, activity: str) -> None:
        self.ctx.heartbeat(self.worker, f"{self.issue.name}: {activity}", self.meter.total_usd)

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Time a stage, telling the status displays it has begun."""
        self.beat(name)
        return self.outcome.stage(name)


@dataclass(frozen=True)
class CheckReport:
    passed: bool
    report: str


def _implement(run: _IssueRun, workspace: Workspace) -> tuple[AgentResult, CheckReport]:
    """Agent, checks, and up to max_revisions more rounds while the checks fail. The
    result's summary tells what every round did (a revision's alone is only its fix)."""
    ctx = run.ctx
    failures: str | None = None
    checks = CheckReport(True, "")
    agent = AgentResult(ok=False, error="not started")
    summaries: list[str] = []
    for revision in range(ctx.settings.max_revisions + 1):
        with run.stage("agent"):
            agent = _run_agent_with_retries(run, workspace, failures)
        if not agent.ok:
            return agent, checks
        if not workspace.changed_files():
            return AgentResult(ok=False, error="the agent changed no file"), checks
        summaries.append(agent.summary.strip() or "(no summary)")
        with run.stage("checks"):
            checks = run_checks(workspace.path, ctx, run.issue, run.command_env())
        run.log(f"checks after round {revision + 1}: {'passed' if checks.passed else 'failed'}")
        if checks.passed:
            break
        failures = checks.report
    revisions = [f"After the checks failed: {summary}" for summary in summaries[1:]]
    return agent.model_copy(update={"summary": "\n\n".join(summaries[:1] + revisions)}), checks


def _run_agent_with_retries(
    run: _IssueRun, workspace: Workspace, failures: str | None
) -> AgentResult:
    """Run the agent; a transient model error runs it again, from the workspace as the
    first attempt found it (the failed attempt's edits and commits are undone)."""
    issue, ctx, meter, log = run.issue, run.ctx, run.meter, run.log
    settings = ctx.settings
    start = workspace.snapshot()
    for retry in range(settings.max_agent_retries + 1):
        if retry:
            workspace.restore(start)
        run.outcome.attempts += 1
        toolbox = Toolbox(workspace.path, command_timeout=settings.command_timeout,
                          env=run.command_env(), stop=ctx.stop)  # fmt: skip
        try:
            result = run_agent(
                ctx.model_for(issue), toolbox, build_task_prompt(issue, failures),
                system=ctx.system_prompt, max_turns=settings.max_turns,
                budget_usd=max(0.0, settings.budget_usd_per_issue - meter.total_usd),
                model_name=settings.model, meter=meter, max_tokens=settings.max_tokens,
                on_turn=lambda turns: run.beat(f"agent turn {turns}"),
                stop=ctx.stop,
            )  # fmt: skip
        except AgentError as exc:  # transient: the SDK already retried the call itself
            if retry == settings.max_agent_retries:
                return AgentResult(ok=False, error=f"model unavailable: {exc}")
            delay = settings.retry_backoff_seconds * 2**retry
            log(f"transient model error ({exc}); retrying in {delay:g}s")
            ctx.pause(delay)
            continue
        log(f"agent: {'done' if result.ok else 'failed'} in {result.turns} turns, "
            f"${result.cost_usd:.4f}" + (f": {result.error}" if result.error else ""))  # fmt: skip
        return result
    raise AssertionError("unreachable")


def run_checks(
    workdir: Path, ctx: FleetContext, issue: Issue, extra_env: Mapping[str, str] | None = None
) -> CheckReport:
    """The repository's own pipeline config, run in the workspace (no secrets in its env;
    a throwaway HOME, so that the caches and logs tools keep there stay out of the PR);
    `extra_env` is added to its commands' environment (the issue's markers)."""
    if ctx.settings.checks_config is None:
        return CheckReport(True, "no checks configured")
    config_path = workdir / ctx.settings.checks_config
    if not config_path.is_file():
        return CheckReport(True, f"the repository has no {ctx.settings.checks_config}")
    try:
        config = load_config(config_path)
        matrix = build_matrix(config, config_path)
        setup = plan_setup(config, config_path, matrix.workdir)
    except ConfigError as exc:
        return CheckReport(False, f"invalid checks config: {exc}")
    report_dir = ctx.report_dir / "checks" / issue.name
    marker = new_marker()  # what the checks leave running goes before their HOME and cache
    with (
        tempfile.TemporaryDirectory(prefix="fleet-checks-", ignore_cleanup_errors=True) as home,
        cache_in_use(setup),
        ending_leftovers(marker),
    ):
        extra = marked(extra_env or {}, marker)
        env = cache_env(setup, scrubbed_env(os.environ, home=Path(home), extra=extra))
        if setup is not None:
            summary = run_setup(setup, matrix.workdir, env, report_dir / "logs" / "setup.log",
                                stop=ctx.stop)  # fmt: skip
            if summary.status == "failed":
                return CheckReport(False, f"checks setup failed:\n{summary.log_tail}")
        worker_ctx = WorkerContext(workdir=matrix.workdir, env=env, report_dir=report_dir,
                                   stop=ctx.stop)  # fmt: skip
        results = [run_task(spec, "checks", worker_ctx) for spec in matrix.tasks]
    if ctx.stop.reason is not None:  # some may not have run: no verdict
        return CheckReport(False, f"checks stopped: {ctx.stop.reason}")
    failed = [r for r in results if r.failed]
    if not failed:
        return CheckReport(True, f"all {len(results)} checks passed")
    details = "\n\n".join(f"{r.name} ({r.status}):\n{r.log_tail}" for r in failed)
    return CheckReport(False, f"{len(failed)} of {len(results)} checks failed\n\n{details}")


def _publish(
    run: _IssueRun, workspace: Workspace, agent: AgentResult, checks: CheckReport
) -> PullRequest:
    issue, ctx = run.issue, run.ctx
    files = workspace.changed_files()
    name, email = ctx.author
    workspace.commit_all(f"{issue.title}\n\nCloses #{issue.number}", name, email)
    workspace.push()
    body = pull_request_body(
        issue, agent, checks, files, run.meter, ctx.settings.model, run.outcome.attempts
    )
    return ctx.tracker.open_pull_request(issue, workspace.branch, _title(issue), body)


def pull_request_body(
    issue: Issue,
    agent: AgentResult,
    checks: CheckReport,
    files: list[str],
    meter: CostMeter,
    model: str,
    attempts: int,
) -> str:
    usage = meter.usage
    lines = [
        f"Closes #{issue.number}",
        "",
        "## What changed",
        "",
        agent.summary.strip() or "(no summary)",
        "",
        *[f"- `{path}`" for path in files[:50]],
        "",
        "## Checks",
        "",
        ("✅ " if checks.passed else "❌ ") + checks.report.splitlines()[0],
        "",
        "## Cost",
        "",
        f"${meter.total_usd:.4f} with {model}: {meter.calls} calls, {usage.input_tokens} input / "
        f"{usage.output_tokens} output tokens ({usage.cache_read_input_tokens} cache reads, "
        f"{usage.cache_creation_input_tokens} cache writes), {attempts} agent attempt(s).",
    ]
    return "\n".join(lines)


def _title(issue: Issue) -> str:
    title = " ".join(issue.title.split())
    return title if len(title) <= 120 else title[:117] + "..."


def _fail(run: _IssueRun, reason: str) -> None:
    run.outcome.status = "failed"
    run.log(f"failed: {reason}")
    message = failure_comment(reason)
    try:
        run.ctx.tracker.finish(run.issue, False, message)
    except TrackerError as exc:
        run.log(f"could not label the issue as failed: {exc}")


def _stopped(run: _IssueRun, reason: str) -> None:
    """The run was stopped before this issue was done. Interrupted, the issue goes back to
    the queue for a later run, and counts as skipped (left for later, not failed);
    cancelled (CANCELLED), it is failed: stopped on purpose. Its workspace is kept or
    cleaned as a failed one's."""
    if reason == CANCELLED:
        _fail(run, CANCELLED)
        return
    run.outcome.status = "skipped"
    run.log(f"stopped: {reason}; the issue goes back to the queue")
    message = f"The fleet run working on this issue was stopped: {reason}. Back in the queue."
    try:
        run.ctx.tracker.release(run.issue, message)
    except TrackerError as exc:
        run.log(f"could not put the issue back in the queue: {exc}")


def failure_comment(reason: str) -> str:
    """What a failed issue is told."""
    return f"The agent could not resolve this issue:\n\n{reason}"


def fail_abandoned_issue(ctx: FleetContext, issue: Issue, worker: str, reason: str) -> None:
    """Label an issue failed, with a comment saying why, if it is still in progress under
    `worker`'s claim: its worker died without finishing it (its issue process was killed).
    Never raises: a tracker error is logged."""
    tracker = ctx.tracker
    try:
        current = tracker.get(issue.number)
        ours = tracker.last_claim(issue.number) == f"{ctx.claimant}/{worker}"
        if ours and tracker.labels.in_progress in current.labels:
            tracker.finish(current, False, failure_comment(reason))
    except TrackerError as exc:
        logger.warning("could not label %s as failed: %s", issue.name, exc)


def _result(run: _IssueRun, unit: IssueUnit, worker: str, started: datetime) -> IssueResult:
    outcome, meter = run.outcome, run.meter
    ended = datetime.now(UTC)
    return IssueResult(
        name=unit.name,
        priority=unit.priority,
        status=outcome.status,
        attempts=outcome.attempts,
        started_at=started,
        ended_at=ended,
        duration_s=round((ended - started).total_seconds(), 4),
        worker=worker,
        log_tail=read_tail(run.log.path),
        issue=unit.issue.number,
        branch=unit.issue.branch,
        pull_request=outcome.pull_request,
        cost_usd=round(meter.total_usd, 6),
        stages=outcome.stages,
    )


def skipped_issue(unit: IssueUnit, reason: str) -> IssueResult:
    return IssueResult(
        name=unit.name, priority=unit.priority, status="skipped", log_tail=f"skipped: {reason}",
        issue=unit.issue.number, branch=unit.issue.branch,
    )  # fmt: skip


def crashed_issue(unit: IssueUnit, worker: str, error: BaseException) -> IssueResult:
    return IssueResult(
        name=unit.name, priority=unit.priority, status="failed", worker=worker,
        log_tail=f"worker crashed: {error.__class__.__name__}: {error}",
        issue=unit.issue.number, branch=unit.issue.branch,
    )  # fmt: skip

"""Notifications through Apprise when a run finishes: one short message per configured URL.

Apprise URLs often embed tokens (`slack://T/B/token`), so they are `SecretStr` and never
appear in an error, a log line or a repr. Delivery problems are returned, never raised:
a notification must not change the outcome of the run it reports.
"""

from __future__ import annotations

import logging
import string
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from flows.report import STATUS_ICONS, Report

Outcome = Literal["success", "failure"]
OUTCOMES: tuple[Outcome, ...] = ("success", "failure")
TITLE_FIELDS = (
    "icon", "kind", "name", "outcome", "succeeded", "failed", "timed_out", "skipped", "total",
)  # fmt: skip
MAX_LISTED_FAILURES = 20
APPRISE_DOCS = "https://github.com/caronc/apprise/wiki"

_SAMPLE_TITLE_VALUES: dict[str, object] = {
    **dict.fromkeys(TITLE_FIELDS, 0), "icon": "✅", "kind": "pipeline", "name": "app",
    "outcome": "success",
}  # fmt: skip
_APPRISE_LOCK = threading.Lock()
_MUTED_LOGGERS = ("apprise", "urllib3.connectionpool")


class Notifications(BaseModel):
    """The `notifications:` section of a pipeline or fleet config."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    urls: Annotated[list[SecretStr], Field(min_length=1)] = Field(
        description=f"Apprise URLs ({APPRISE_DOCS}); secret, as they often hold tokens."
    )
    on: Annotated[list[Outcome], Field(min_length=1)] = Field(
        default_factory=lambda: list(OUTCOMES),
        description="Which outcomes send a message: success, failure or both.",
    )
    title: str | None = Field(
        default=None,
        description="Title template; placeholders: " + ", ".join(f"{{{f}}}" for f in TITLE_FIELDS),
    )

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        """A bare `on:` key, which YAML 1.1 reads as the boolean true, is `on`; a single URL
        is a list of one (made here, so no field error ever echoes a URL back)."""
        if not isinstance(data, dict):
            return data
        if any(key is True for key in data) and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        if isinstance(data.get("urls"), str | SecretStr):
            data = {**data, "urls": [data["urls"]]}
        return data

    @field_validator("urls")
    @classmethod
    def _apprise_urls(cls, urls: list[SecretStr]) -> list[SecretStr]:
        for index, url in enumerate(urls, start=1):
            if not apprise_accepts(url.get_secret_value()):
                raise ValueError(
                    f"entry {index} of {len(urls)} is not a URL Apprise supports (see "
                    f"{APPRISE_DOCS}; the URL is not shown as it may hold a token)"
                )
        return urls

    @field_validator("title")
    @classmethod
    def _known_placeholders(cls, template: str | None) -> str | None:
        if template is not None:
            check_title_template(template)
        return template


def check_title_template(template: str) -> None:
    """ValueError naming the problem when `template` is not a usable title template."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(
            f"not a valid template ({exc}); write literal braces as {{{{ }}}}"
        ) from None
    unknown = [name for name in names if name not in TITLE_FIELDS]
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in TITLE_FIELDS)
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {known}")
    try:
        template.format_map(_SAMPLE_TITLE_VALUES)
    except KeyError as exc:  # a placeholder nested in a format spec, e.g. {name:>{width}}
        raise ValueError(f"unknown placeholder {{{exc.args[0]}}}") from None
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"not a valid template ({exc})") from None


def outcome_of(report: Report) -> Outcome:
    return "success" if report.ok else "failure"


def render_title(report: Report, template: str | None = None) -> str:
    """`✅ pipeline sample-app: 11/11 succeeded`, or the configured template filled in."""
    values = title_values(report)
    if template is not None:
        return template.format_map(values)
    s = report.summary
    parts = [f"{values['icon']} {report.kind} {report.name}: {s.succeeded}/{s.total} succeeded"]
    if report.setup.status == "failed":
        parts.append("setup failed")
    if s.failed:
        parts.append(f"{s.failed} failed")
    if s.timed_out:
        parts.append(f"{s.timed_out} timed out")
    return ", ".join(parts)


def title_values(report: Report) -> dict[str, object]:
    """The placeholders of a title template."""
    s = report.summary
    return {
        "icon": "✅" if report.ok else "❌",
        "kind": report.kind,
        "name": report.name,
        "outcome": outcome_of(report),
        "succeeded": s.succeeded,
        "failed": s.failed,
        "timed_out": s.timed_out,
        "skipped": s.skipped,
        "total": s.total,
    }


def render_body(report: Report, link: str | None = None, link_after: str | None = None) -> str:
    """A short markdown summary: counts, wall time, cost, failed units, the Prefect link
    (and what opens it, `link_after`, when it does not work by itself)."""
    s = report.summary
    facts = [f"Wall time {report.wall_s:.1f}s"]
    if s.cost_usd is not None:
        facts.append(f"cost ${s.cost_usd:.4f}")
    lines = [
        f"**{report.kind.capitalize()} {report.name}**: {s.succeeded}/{s.total} succeeded, "
        f"{s.failed} failed, {s.timed_out} timed out, {s.skipped} skipped",
        "",
        " · ".join(facts),
    ]
    if report.setup.status == "failed":
        lines += ["", f"Setup failed after {report.setup.duration_s:.1f}s: no task ran."]
    failures = [unit for unit in report.tasks if unit.failed]
    if failures:
        lines += ["", "Failed:"]
        for unit in failures[:MAX_LISTED_FAILURES]:
            exit_code = "" if unit.exit_code is None else f" (exit {unit.exit_code})"
            lines.append(f"- {unit.name}: {STATUS_ICONS[unit.status]} {unit.status}{exit_code}")
        if len(failures) > MAX_LISTED_FAILURES:
            lines.append(f"- and {len(failures) - MAX_LISTED_FAILURES} more")
    if link:
        after = f" (after {link_after})" if link_after else ""
        lines += ["", f"[Open the run in Prefect]({link}){after}"]
    return "\n".join(lines)


def notify(
    report: Report,
    settings: Notifications,
    link: str | None = None,
    link_after: str | None = None,
) -> list[str]:
    """Send one message per URL when the run's outcome is in `settings.on`, with the run's
    `link` (see `render_body`).

    Returns one line per failed delivery ("notification 2 of 3 failed: ..."), never the URL;
    an empty list when everything was sent or nothing had to be."""
    outcome = outcome_of(report)
    if outcome not in settings.on:
        return []
    title = render_title(report, settings.title)
    body = render_body(report, link, link_after)
    total = len(settings.urls)
    errors: list[str] = []
    for index, url in enumerate(settings.urls, start=1):
        problem = _send(url.get_secret_value(), title, body, outcome)
        if problem:
            errors.append(f"notification {index} of {total} failed: {problem}")
    return errors


def apprise_accepts(url: str) -> bool:
    """True when Apprise can parse `url` into one of its services (nothing is sent)."""
    import apprise

    with _apprise_muted():
        return apprise.Apprise.instantiate(url, suppress_exceptions=True) is not None


def _send(url: str, title: str, body: str, outcome: Outcome) -> str | None:
    """Deliver one message; a short reason (without the URL) when it was not delivered."""
    import apprise

    kind = apprise.NotifyType.SUCCESS if outcome == "success" else apprise.NotifyType.FAILURE
    with _apprise_muted():
        try:
            service = apprise.Apprise()
            if not service.add(url):
                return "not a URL Apprise supports"
            delivered = service.notify(
                body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.MARKDOWN
            )
        except Exception as exc:  # a notification must never fail the run
            return f"unexpected {exc.__class__.__name__}"
    return None if delivered else "the service could not be reached or refused the message"


@contextmanager
def _apprise_muted() -> Iterator[None]:
    """Apprise logs URLs it cannot parse verbatim, and urllib3 logs request paths at debug
    level (webhook tokens often live there): mute both while Apprise is in use."""
    loggers = [logging.getLogger(name) for name in _MUTED_LOGGERS]
    with _APPRISE_LOCK:
        previous = [logger.disabled for logger in loggers]
        for logger in loggers:
            logger.disabled = True
        try:
            yield
        finally:
            for logger, disabled in zip(loggers, previous, strict=True):
                logger.disabled = disabled

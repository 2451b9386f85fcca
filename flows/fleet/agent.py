"""The agent loop: a model that calls tools in one workspace until it is done.

`Model` is the one seam to the LLM: `ClaudeModel` calls the Messages API (a streamed reply,
the whole history each turn), `ScriptedModel` replays turns for tests and simulations.

Errors and retries: the SDK already retries 408/409/429/5xx/529 and connection errors
(`max_retries` on the client), so a model error that reaches `run_agent` is final for this
attempt. `run_agent` returns ok=False for a permanent one (bad key, bad request, ...), and
RE-RAISES a transient one (`AgentError.transient`: rate limit, overload, server error,
connection) for the caller to retry the whole attempt up to `max_agent_retries`, from the
workspace as the attempt found it. The cost of every call, including those of a failed
attempt, is in the caller's `CostMeter`; `AgentResult.cost_usd` and `budget_usd` cover the
calls of this attempt only.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from flows.commands import RunStop
from flows.fleet.cost import CostMeter
from flows.fleet.models import AgentResult, Issue, Usage
from flows.fleet.tools import Toolbox

log = logging.getLogger(__name__)

SYSTEM_PROMPT_PATH = Path(__file__).parent / "prompts" / "system.md"
DEFAULT_MAX_TOKENS = 16_000
MAX_ISSUE_BODY_CHARS = 30_000
MAX_CHECK_OUTPUT_CHARS = 20_000
CONTINUE_PROMPT = "Your reply was cut off at the output token limit. Please continue."
CUT_TOOL_CALL = (
    "Not run: your reply was cut off at the output token limit, so this call's input may be "
    "incomplete. Make the call again with less in it (write a large file in parts)."
)
# The tool results the conversation keeps in full, in characters (about 4 per token): past
# it the oldest are elided, so a long session stays inside the model's context window.
HISTORY_BUDGET_CHARS = 400_000
ELIDED_RESULT = "[elided to keep the conversation short: make the call again if you need it]"
FINISHED = ("end_turn", "stop_sequence")

Message = dict[str, Any]
Block = dict[str, Any]
ErrorKind = Literal["transient", "permanent"]


@dataclass(frozen=True)
class ModelTurn:
    """One assistant reply: content blocks in the Messages API's shape (text, tool_use with
    id, name and input, ...), why it stopped, and what it used."""

    content: list[Block]
    stop_reason: str | None
    usage: Usage


class AgentError(Exception):
    """A model call that failed for good (after the SDK's own retries). `usage`: what it
    used all the same, when its reply broke off after it had begun."""

    def __init__(self, kind: ErrorKind, message: str, usage: Usage | None = None) -> None:
        super().__init__(kind, message, usage)  # all in args, so it pickles across processes
        self.kind: ErrorKind = kind
        self.message = message
        self.usage = usage

    @property
    def transient(self) -> bool:
        return self.kind == "transient"

    def __str__(self) -> str:
        return f"{self.kind} model error: {self.message}"


class Model(Protocol):
    def complete(
        self,
        *,
        system: str,
        messages: list[Message],
        tools: list[dict[str, Any]],
        max_tokens: int,
        stop: RunStop,
    ) -> ModelTurn:
        """The model's next turn. A stop of the run may end the call early, with an
        AgentError (see `RunStop.on_stop`)."""
        ...


# ----- a scripted model ----------------------------------------------------------------------


class ScriptExhaustedError(RuntimeError):
    """A ScriptedModel was asked for more turns than it was given."""


class ScriptedModel:
    """Replays `turns` in order (an AgentError in the script is raised instead) and records
    every request in `calls` (deep copies: the loop keeps appending to its history)."""

    def __init__(self, turns: Iterable[ModelTurn | AgentError]) -> None:
        self._turns = list(turns)
        self.calls: list[dict[str, Any]] = []

    def complete(
        self,
        *,
        system: str,
        messages: list[Message],
        tools: list[dict[str, Any]],
        max_tokens: int,
        stop: RunStop,
    ) -> ModelTurn:
        request = {"system": system, "messages": messages, "tools": tools, "max_tokens": max_tokens}
        self.calls.append(copy.deepcopy(request))
        if len(self.calls) > len(self._turns):
            raise ScriptExhaustedError(
                f"ScriptedModel has {len(self._turns)} turns; call {len(self.calls)} has none"
            )
        turn = self._turns[len(self.calls) - 1]
        if isinstance(turn, AgentError):
            raise turn
        return turn


# ----- the loop ------------------------------------------------------------------------------


@dataclass
class _Progress:
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    def result(self, ok: bool, *, summary: str = "", error: str | None = None) -> AgentResult:
        return AgentResult(
            ok=ok,
            summary=summary,
            turns=self.turns,
            usage=self.usage,
            cost_usd=self.cost_usd,
            error=error,
        )


def run_agent(
    model: Model,
    toolbox: Toolbox,
    task_prompt: str,
    *,
    system: str,
    max_turns: int,
    budget_usd: float,
    model_name: str,
    meter: CostMeter,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    on_turn: Callable[[int], None] | None = None,
    stop: RunStop | None = None,
) -> AgentResult:
    """Let the model work on `task_prompt` with the toolbox's tools until it ends its turn.

    Stops with ok=False at `max_turns` model calls, when this run's cost passes `budget_usd`
    (checked after every call; a final answer that arrives over budget still counts, as
    nothing more is spent), or on a permanent model error. A transient model error is
    raised (see the module docstring). Raises UnknownModelError before any call when
    `model_name` has no price. `on_turn(turns)` is called after every model call (a
    heartbeat for status displays). A `stop` of the run stops the agent with ok=False
    before its next call, or during one: a reply being streamed is cut short (and counted).
    """
    stop = stop or RunStop()
    meter.price(model_name)
    messages: list[Message] = [{"role": "user", "content": task_prompt}]
    tools = toolbox.schemas()
    progress = _Progress()
    if budget_usd <= 0:  # e.g. a retry after attempts that spent it all
        return progress.result(False, error="budget exceeded: none of it left for this attempt")
    cut_text: list[str] = []  # what replies cut at max_tokens said, before their sequel
    while True:
        if stop.reason is not None:
            return progress.result(False, error=f"stopped: {stop.reason}")
        _elide_old_tool_results(messages, HISTORY_BUDGET_CHARS)
        try:
            turn = model.complete(
                system=system, messages=messages, tools=tools, max_tokens=max_tokens, stop=stop
            )
        except AgentError as exc:
            if exc.usage is not None:  # a reply that broke off counts all the same
                progress.usage = progress.usage + exc.usage
                progress.cost_usd += meter.add(model_name, exc.usage)
            if stop.reason is not None:  # the stop cut the call short
                return progress.result(False, error=f"stopped: {stop.reason}")
            if exc.transient:
                raise
            return progress.result(False, error=str(exc))
        progress.turns += 1
        progress.usage = progress.usage + turn.usage
        progress.cost_usd += meter.add(model_name, turn.usage)
        if on_turn is not None:
            on_turn(progress.turns)
        messages.append({"role": "assistant", "content": turn.content})
        tool_uses = [block for block in turn.content if block.get("type") == "tool_use"]
        log.info(
            "turn %d: stop_reason=%s tools=%s cost=$%.4f",
            progress.turns,
            turn.stop_reason,
            [block.get("name") for block in tool_uses],
            progress.cost_usd,
        )
        if not tool_uses and turn.stop_reason in FINISHED:
            summary = "".join([*cut_text, _text_of(turn.content)]).strip()
            return progress.result(True, summary=summary)
        if not tool_uses and turn.stop_reason == "refusal":
            return progress.result(False, error="the model refused the task")
        if turn.stop_reason == "model_context_window_exceeded":
            error = f"the conversation outgrew the model's context window ({progress.turns} turns)"
            return progress.result(False, error=error)
        if progress.cost_usd > budget_usd:
            error = f"budget exceeded: ${progress.cost_usd:.4f} > ${budget_usd:.4f}"
            return progress.result(False, error=f"{error} after {progress.turns} turns")
        if progress.turns >= max_turns:
            return progress.result(False, error=f"max_turns reached ({max_turns}) before done")
        if tool_uses:
            cut_text.clear()  # text cut before a tool call is no part of the final answer
            # Only a reply that stopped to call its tools holds them whole: one cut at
            # max_tokens (or ended early) may hold the last call's input in part.
            complete = turn.stop_reason == "tool_use"
            answers = _run_tools(toolbox, tool_uses) if complete else _refuse_tools(tool_uses)
            messages.append({"role": "user", "content": answers})
        else:  # cut off at max_tokens: ask the model to go on
            cut_text.append(_text_of(turn.content, strip=False))
            messages.append({"role": "user", "content": CONTINUE_PROMPT})


def _run_tools(toolbox: Toolbox, tool_uses: list[Block]) -> list[Block]:
    """One tool_result per tool_use, same ids, in order."""
    results = []
    for block in tool_uses:
        outcome = toolbox.call(str(block.get("name")), block.get("input"))
        if outcome.is_error:
            log.info("tool %s refused or failed", block.get("name"))
        results.append(
            {
                "type": "tool_result",
                "tool_use_id": block.get("id"),
                "content": outcome.text,
                "is_error": outcome.is_error,
            }
        )
    return results


def _refuse_tools(tool_uses: list[Block]) -> list[Block]:
    """An error tool_result for each tool_use of a cut reply, none of them run."""
    return [
        {"type": "tool_result", "tool_use_id": block.get("id"), "content": CUT_TOOL_CALL,
         "is_error": True}
        for block in tool_uses
    ]  # fmt: skip


def _elide_old_tool_results(messages: list[Message], budget_chars: int) -> None:
    """Replace the content of the oldest tool results with a short note while all of them
    together exceed `budget_chars`; the results the model has not seen yet (the last
    message's) are always kept. Once over budget, it elides down to half of it, so that the
    history (and its prompt cache) changes rarely."""
    results = [_tool_results(message) for message in messages]
    total = sum(len(str(block["content"])) for blocks in results for block in blocks)
    if total <= budget_chars:
        return
    for block in (block for blocks in results[:-1] for block in blocks):
        if total <= budget_chars // 2:
            break
        total -= len(str(block["content"])) - len(ELIDED_RESULT)
        block["content"] = ELIDED_RESULT


def _tool_results(message: Message) -> list[Block]:
    """The tool results of a message that still have their content."""
    content = message["content"]
    if message["role"] != "user" or not isinstance(content, list):
        return []
    return [
        block
        for block in content
        if block.get("type") == "tool_result" and block.get("content") != ELIDED_RESULT
    ]


def _text_of(content: list[Block], *, strip: bool = True) -> str:
    text = "\n".join(block["text"] for block in content if block.get("type") == "text")
    return text.strip() if strip else text


# ----- prompts -----------------------------------------------------------------------------


def load_system_prompt(path: Path = SYSTEM_PROMPT_PATH) -> str:
    return path.read_text(encoding="utf-8")


def build_task_prompt(issue: Issue, check_failures: str | None = None) -> str:
    """The first user message: the issue (body capped) and, on a revision, the output of
    the checks that failed on the previous attempt (its end kept: that is where the
    failures are summarised)."""
    title = " ".join(issue.title.split())
    body = issue.body.strip() or "(The issue has no description; work from the title.)"
    if len(body) > MAX_ISSUE_BODY_CHARS:
        omitted = len(body) - MAX_ISSUE_BODY_CHARS
        body = body[:MAX_ISSUE_BODY_CHARS] + f"\n[... issue body cut: {omitted} more characters]"
    parts = [
        f"Resolve GitHub issue #{issue.number}: {title}",
        f"<issue>\n{body}\n</issue>",
    ]
    if check_failures is not None:
        output = check_failures.strip()
        if len(output) > MAX_CHECK_OUTPUT_CHARS:
            omitted = len(output) - MAX_CHECK_OUTPUT_CHARS
            output = f"[... {omitted} earlier characters cut]\n" + output[-MAX_CHECK_OUTPUT_CHARS:]
        parts.append(
            "This is a revision: your previous change is in the working tree, but these "
            "checks failed on it. Fix the failures without losing the change.\n"
            f"<check_failures>\n{output}\n</check_failures>"
        )
    parts.append("When you are done, reply with a summary of your change for the pull request.")
    return "\n\n".join(parts)

"""Claude as the agent's model: the anthropic SDK's Messages API behind the `Model` protocol
of the agent loop. Kept apart so that the loop (and test mode) never imports the SDK."""

from __future__ import annotations

import contextlib
import functools
import math
import socket
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import anthropic
import httpx2
from anthropic.lib.streaming import MessageStream, ParsedMessageStreamEvent
from anthropic.types import Message as Reply

from flows.commands import RunStop
from flows.fleet.agent import AgentError, Block, ErrorKind, Message, ModelTurn
from flows.fleet.models import Usage

if TYPE_CHECKING:
    from anthropic._models import FinalRequestOptions

# Errors that the SDK retries itself; still failing after its retries, worth a later attempt.
TRANSIENT_ERRORS: tuple[type[anthropic.AnthropicError], ...] = (
    anthropic.RateLimitError,  # but not a spend limit: see SPEND_LIMIT_CODES
    anthropic.InternalServerError,  # 5xx, OverloadedError (529) included
    anthropic.APIConnectionError,  # APITimeoutError included
    anthropic.RequestTimeoutError,
    anthropic.ConflictError,
)
# 429s (`error.details.error_code`) that no retry can get past until a human raises the limit.
SPEND_LIMIT_CODES = frozenset({"contract_spend_limit_reached", "enforced_spend_limit_reached"})
# Error types of an `error` event inside a streaming (HTTP 200) response worth a later attempt.
TRANSIENT_STREAM_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
CHARS_PER_TOKEN = 4  # a rough count of the output of a reply cut short
# The stop of the run whose model call this thread is making (set by ClaudeModel.complete):
# the SDK's wait between retries of the call ends on it (StoppableAnthropic).
_CALL_STOP: ContextVar[RunStop | None] = ContextVar("claude_call_stop", default=None)


class RetryStopped(anthropic.AnthropicError):
    """The run was stopped while the SDK waited to retry a call."""


class StoppableAnthropic(anthropic.Anthropic):
    """The SDK's client, whose wait between the retries of a call ends as soon as the run
    making the call is stopped, instead of sleeping it out: the SDK waits as long as a
    `retry-after` header asks (a rate limit's can be minutes). Its retry rules and delays
    are the SDK's own (`_sleep_for_retry` overrides the SDK's, pinned in pyproject.toml)."""

    def _sleep_for_retry(
        self,
        *,
        retries_taken: int,
        max_retries: int,
        options: FinalRequestOptions,
        response: httpx2.Response | None,
    ) -> None:
        stop = _CALL_STOP.get()
        if stop is None:  # a call not made by ClaudeModel.complete
            super()._sleep_for_retry(retries_taken=retries_taken, max_retries=max_retries,
                                     options=options, response=response)  # fmt: skip
            return
        headers = response.headers if response is not None else None
        delay = self._calculate_retry_timeout(max_retries - retries_taken, options, headers)
        stop.wait(delay)
        if stop.reason is not None:
            raise RetryStopped(f"stopped while waiting {delay:.1f}s to retry the call")


class ClaudeModel:
    """Claude through an injected `anthropic.Anthropic` client (its `max_retries` applies).

    Replies are streamed, as the SDK requires for a large `max_tokens` (it refuses a
    non-streaming request that may take over 10 minutes), so no connection sits idle while
    Claude writes; the SDK retries the request until the stream starts, not after.

    A stop of the run cuts a reply being streamed short (`_cut`); what it used so far is
    counted all the same. With a `StoppableAnthropic` client, it also ends the SDK's wait
    to retry the call.

    With `prompt_cache`, the tools and system prompt and the conversation so far are marked
    for the 5-minute prompt cache, so each turn pays the cache-read rate for its history.
    """

    def __init__(
        self, client: anthropic.Anthropic, model: str, *, prompt_cache: bool = True
    ) -> None:
        self._client = client
        self.model = model
        self.prompt_cache = prompt_cache

    def __repr__(self) -> str:
        return f"ClaudeModel({self.model!r})"

    def complete(
        self,
        *,
        system: str,
        messages: list[Message],
        tools: list[dict[str, Any]],
        max_tokens: int,
        stop: RunStop,
    ) -> ModelTurn:
        cache = self.prompt_cache
        secrets = [s for s in (self._client.api_key, self._client.auth_token) if s]
        stream: MessageStream | None = None
        written = _Written()
        call_stop = _CALL_STOP.set(stop)
        try:
            with self._client.messages.stream(
                model=self.model,
                max_tokens=max_tokens,
                system=cast(Any, _cached_system(system) if cache else system),
                messages=cast(Any, _cached_messages(messages) if cache else messages),
                tools=cast(Any, tools),
            ) as stream:
                with stop.on_stop(functools.partial(_cut, stream)):
                    for event in stream:
                        written.add(event)
                        if event.type == "message_stop":
                            break  # the stream's end is read after the block: see _cut
                reply = stream.get_final_message()  # AssertionError: the stream had no message
        except anthropic.AnthropicError as exc:
            raise agent_error(exc, secrets, written.usage_so_far(stream)) from None
        except httpx2.TransportError as exc:  # the SDK's retries end once the stream has begun
            message = f"connection lost while streaming the reply ({type(exc).__name__}: {exc})"
            used = written.usage_so_far(stream)
            raise AgentError("transient", _redact(message, secrets), used) from None
        except AssertionError:
            raise AgentError("transient", "the reply stream ended before a message began") from None
        except ValueError as exc:  # e.g. text the SDK cannot encode: the same request fails again
            message = f"the SDK rejected the request or its reply ({type(exc).__name__}: {exc})"
            used = written.usage_so_far(stream)
            raise AgentError("permanent", _redact(message, secrets), used) from None
        finally:
            _CALL_STOP.reset(call_stop)
        if reply.stop_reason is None:  # the stream ended cleanly, but before message_stop
            message = "the reply stream ended before the reply did"
            raise AgentError("transient", message, written.usage_so_far(stream))
        return ModelTurn(
            content=[_block_to_dict(block) for block in reply.content],
            stop_reason=reply.stop_reason,
            usage=_usage_of(reply),
        )


def _cut(stream: MessageStream) -> None:
    """End a reply being streamed, from another thread (a stop of the run).

    Closing the response would not wake a read waiting for the next bytes; shutting its
    socket down does, and the reading thread then fails with a transport error. Shut down
    as a plain socket: `SSLSocket.shutdown` would also drop the TLS layer under the reader,
    which would then take encrypted bytes for the reply (and lose its usage).

    The connection is the reply's own while this can be called: at `message_stop` the
    `on_stop` block ends before the stream's last read, which hands the connection back to
    the client's pool. (A reply that breaks off without one hands it back inside the block;
    a client is never shared between runs.) A request still being sent, or waiting for
    the reply's headers, is not cut: it ends first."""
    network = stream.response.extensions.get("network_stream")
    connection = network.get_extra_info("socket") if network is not None else None
    if isinstance(connection, socket.socket):
        with contextlib.suppress(OSError):  # closed meanwhile
            socket.socket.shutdown(connection, socket.SHUT_RDWR)


def _usage_of(reply: Reply) -> Usage:
    usage = reply.usage
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
        cache_read_input_tokens=usage.cache_read_input_tokens or 0,
    )


class _Written:
    """What a streamed reply has written so far (text, thinking, tool input as the raw
    JSON received), to count a reply cut short by: the API reports the output tokens at
    the end only."""

    def __init__(self) -> None:
        self.chars = 0

    def add(self, event: ParsedMessageStreamEvent[Any]) -> None:
        if event.type == "text":
            self.chars += len(event.text)
        elif event.type == "thinking":
            self.chars += len(event.thinking)
        elif event.type == "input_json":
            self.chars += len(event.partial_json)

    def usage_so_far(self, stream: MessageStream | None) -> Usage | None:
        """The usage of a reply cut short, counted against the budget rather than dropped
        (failing calls must not outrun a budget unseen): its input, reported when the reply
        began, and what it wrote, at about 4 characters a token when that is more than it
        reported. None when no reply began."""
        try:
            reply = None if stream is None else stream.current_message_snapshot
        except AssertionError:  # no message_start yet
            reply = None
        if reply is None:
            return None
        usage = _usage_of(reply)
        estimate = math.ceil(self.chars / CHARS_PER_TOKEN)
        return usage.model_copy(update={"output_tokens": max(usage.output_tokens, estimate)})


def agent_error(
    exc: anthropic.AnthropicError, secrets: Iterable[str] = (), usage: Usage | None = None
) -> AgentError:
    """Map an SDK exception to an AgentError: status, error type and the API's message,
    never the request (headers) and never any of `secrets`."""
    if isinstance(exc, anthropic.APIStatusError):
        detail = exc.api_message or "no message"
        where = "error event in the stream" if _mid_stream(exc) else f"HTTP {exc.status_code}"
        message = f"{type(exc).__name__} ({where}, {exc.type}): {detail}"
        if exc.request_id:
            message += f" [request {exc.request_id}]"
    elif isinstance(exc, anthropic.APIError):
        message = f"{type(exc).__name__}: {exc.message}"
    else:
        message = type(exc).__name__
    return AgentError(error_kind(exc), _redact(message, secrets), usage)


def error_kind(exc: anthropic.AnthropicError) -> ErrorKind:
    """Transient when a later attempt may succeed: a TRANSIENT_ERRORS class, or an `error`
    event in the stream of such a type; never a spend limit, whatever its class."""
    if isinstance(exc, anthropic.APIStatusError):
        if exc.error_code in SPEND_LIMIT_CODES:
            return "permanent"
        if _mid_stream(exc):
            return "transient" if exc.type in TRANSIENT_STREAM_ERROR_TYPES else "permanent"
    return "transient" if isinstance(exc, TRANSIENT_ERRORS) else "permanent"


def _mid_stream(exc: anthropic.APIStatusError) -> bool:
    """An `error` event inside a streaming response: the SDK raises it with the response's
    own status, 200 (as a plain APIStatusError, there being no class for 200)."""
    return exc.status_code < 400


def _redact(message: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "[redacted]")
    return message


def _block_to_dict(block: Any) -> Block:
    """An SDK content block as the plain dict the next request sends back."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return cast(Block, block.model_dump(mode="json", exclude_none=True))


def _cached_system(system: str) -> list[Block]:
    return [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]


def _cached_messages(messages: list[Message]) -> list[Message]:
    """A copy of `messages` with a cache breakpoint on the last block of the last message
    (only there: the API allows four breakpoints per request)."""
    if not messages:
        return messages
    last = dict(messages[-1])
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    if blocks:
        blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
    last["content"] = blocks
    return [*messages[:-1], last]


# ----- scripted model for tests and simulations ---------------------------------------------

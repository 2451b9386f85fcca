"""`FakeAnthropic`: a Messages API stand-in (`POST /v1/messages`) that replays a script of
turns, as one JSON message or, for `"stream": true`, as server-sent events.

Each request that passes validation consumes the next scripted turn: an `AssistantTurn`
(content blocks, stop_reason, usage), an `ErrorTurn` (status + Anthropic's error JSON and
`retry-after-ms`, so the SDK's own retries are fast; or, `mid_stream`, an `error` event in a
200 stream) or a `DisconnectTurn` (the connection drops partway through the response).
A streamed turn is sent whole, not paced, with text and tool input split into several
deltas as the real API does. Requests are validated like the real API where that is cheap
(auth, required fields, tool_use/tool_result pairing) and rejected with 400/401 without
consuming a turn. An exhausted script answers 500 with `x-should-retry: false`, so the SDK
fails at once with a clear message.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import LoopbackServer, RawBody, Request, Response

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
DELTA_CHARS = 12  # a streamed text or tool input goes out in deltas of this many characters


@dataclass(frozen=True)
class Usage:
    """Token counts reported back in the response's `usage`."""

    input_tokens: int = 10
    output_tokens: int = 5
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


@dataclass(frozen=True)
class AssistantTurn:
    """A scripted assistant message; `model=None` echoes the request's model. Streamed,
    `stream_events=N` ends the stream cleanly after its first N events (no message_stop),
    as a proxy that closes the response properly in the middle would."""

    content: list[dict[str, Any]]
    stop_reason: str = "end_turn"
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    stream_events: int | None = None


@dataclass(frozen=True)
class ErrorTurn:
    """A scripted API error: status 429/500/529/..., with a retry-after the SDK honours.

    `error_code` goes in `error.details.error_code` (e.g. "contract_spend_limit_reached",
    which the SDK raises as its own class). `mid_stream`: a streaming request gets a 200
    stream that starts a message and then sends the error as an `error` event, as the real
    API does when it fails after the response has begun (a non-streaming one gets the
    plain error response).
    """

    status: int = 529
    message: str = "Overloaded"
    error_type: str | None = None  # None: derived from status (529 -> overloaded_error, ...)
    retry_after_ms: int = 10
    error_code: str | None = None
    mid_stream: bool = False
    usage: Usage = field(default_factory=lambda: Usage(output_tokens=1))  # at message_start

    @property
    def error(self) -> dict[str, Any]:
        """The `error` object of the body (or of the `error` event)."""
        error: dict[str, Any] = {
            "type": self.error_type or ERROR_TYPES.get(self.status, "api_error"),
            "message": self.message,
        }
        if self.error_code:
            error["details"] = {"error_code": self.error_code}
        return error

    def to_response(self, request_id: str) -> Response:
        headers = {
            "retry-after-ms": str(self.retry_after_ms),
            "retry-after": str(math.ceil(self.retry_after_ms / 1000)),
        }
        body = {"type": "error", "error": self.error, "request_id": request_id}
        return Response(self.status, body, {"request-id": request_id, **headers})


@dataclass(frozen=True)
class DisconnectTurn:
    """The connection closes partway through the response: a stream after its first events
    (past the SDK's retries), a JSON message halfway through."""

    usage: Usage = field(default_factory=lambda: Usage(output_tokens=1))  # at message_start


@dataclass(frozen=True)
class StallTurn:
    """A stream that begins (message_start), then sends nothing more until the client
    hangs up or `seconds` pass, and closes: a reply the client has to cut short."""

    seconds: float = 30.0
    usage: Usage = field(default_factory=lambda: Usage(output_tokens=1))  # at message_start


Turn = AssistantTurn | ErrorTurn | DisconnectTurn | StallTurn


def text_block(text: str) -> dict[str, Any]:
    """A `text` content block."""
    return {"type": "text", "text": text}


def tool_use_block(name: str, input: dict[str, Any], block_id: str | None = None) -> dict[str, Any]:
    """A `tool_use` content block (a random `toolu_...` id unless given)."""
    return {
        "type": "tool_use",
        "id": block_id or f"toolu_{uuid.uuid4().hex[:24]}",
        "name": name,
        "input": input,
    }


def text_turn(
    text: str, *, usage: Usage | None = None, stop_reason: str = "end_turn"
) -> AssistantTurn:
    """An assistant turn that only says `text`."""
    return AssistantTurn([text_block(text)], stop_reason, usage or Usage())


def tool_turn(
    name: str,
    input: dict[str, Any],
    *,
    block_id: str | None = None,
    text: str | None = None,
    usage: Usage | None = None,
) -> AssistantTurn:
    """An assistant turn that calls one tool (optionally preceded by some text)."""
    blocks = [text_block(text)] if text else []
    blocks.append(tool_use_block(name, input, block_id))
    return AssistantTurn(blocks, "tool_use", usage or Usage())


class FakeAnthropic(LoopbackServer):
    """Anthropic Messages API stand-in; `api_key=None` accepts any non-empty key."""

    def __init__(
        self,
        script: Iterable[Turn] = (),
        *,
        api_key: str | None = "test-key",
        responder: Callable[[dict[str, Any]], Turn] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`responder`, when given, answers each request (its JSON body) once the script
        is used up: a stand-in agent that never runs out of turns. `tls`: serve HTTPS."""
        super().__init__(tls)
        self.api_key = api_key
        self.responder = responder
        self._lock = threading.Lock()
        self._script: deque[Turn] = deque(script)
        self._requests: list[Any] = []
        self._served = 0

    # ----- test controls / inspection ----------------------------------------------------

    def add(self, *turns: Turn) -> None:
        """Append turns to the script."""
        with self._lock:
            self._script.extend(turns)

    @property
    def requests(self) -> list[Any]:
        """JSON bodies of every `POST /v1/messages` (None if not JSON), rejected ones too."""
        with self._lock:
            return list(self._requests)

    @property
    def remaining(self) -> int:
        """Scripted turns not yet served."""
        with self._lock:
            return len(self._script)

    # ----- HTTP entry point --------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        with self._lock:
            self._served += 1
            return self._respond(request, f"req_fake_{self._served:04d}")

    def _respond(self, request: Request, request_id: str) -> Response:
        if (request.method, request.path.rstrip("/")) != ("POST", "/v1/messages"):
            return _error(404, "not_found_error", "Not found", request_id)
        try:
            body = request.json()
        except ValueError:
            body = None
        self._requests.append(body)
        problem = self._auth_problem(request.headers)
        if problem:
            return _error(401, "authentication_error", problem, request_id)
        if "anthropic-version" not in request.headers:
            message = "anthropic-version: header is required"
            return _error(400, "invalid_request_error", message, request_id)
        problem = _body_problem(body)
        if problem:
            return _error(400, "invalid_request_error", problem, request_id)
        return self._next_turn(body, request_id)

    def _auth_problem(self, headers: dict[str, str]) -> str | None:
        """Why the request is not authenticated (None when it is)."""
        key = headers.get("x-api-key")
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        if not key and scheme.lower() == "bearer":
            key = bearer
        if not key:
            return "x-api-key header is required"
        if self.api_key is not None and key != self.api_key:
            return "invalid x-api-key"
        return None

    def _next_turn(self, body: dict[str, Any], request_id: str) -> Response:
        if self._script:
            turn = self._script.popleft()
        elif self.responder is not None:
            turn = self.responder(body)
        else:
            problem = f"FakeAnthropic script exhausted: request {request_id} has no scripted turn"
            headers = {"x-should-retry": "false"}
            return _error(500, "api_error", problem, request_id, headers)
        streaming = body.get("stream") is True
        message_id = f"msg_fake_{self._served:04d}"
        if isinstance(turn, AssistantTurn):
            model = turn.model or body["model"]
            message = _message(message_id, model, turn.content, turn.stop_reason, turn.usage)
            if streaming:
                events = _message_events(message)[: turn.stream_events]
                return _event_stream(events, request_id)
            return Response(200, message, {"request-id": request_id})
        if isinstance(turn, ErrorTurn) and not (turn.mid_stream and streaming):
            return turn.to_response(request_id)
        # a failure once the response has begun: the message starts, then breaks off
        started = _message(message_id, body["model"], [], None, turn.usage)
        if isinstance(turn, ErrorTurn):
            error = {"type": "error", "error": turn.error, "request_id": request_id}
            return _event_stream([*_start_events(started), _sse("error", error)], request_id)
        if streaming:
            hold_s = turn.seconds if isinstance(turn, StallTurn) else 0.0
            return _event_stream(_start_events(started), request_id, missing=1000, hold_s=hold_s)
        data = json.dumps(started).encode()
        half = len(data) // 2
        cut = RawBody(data[:half], "application/json", missing=len(data) - half)
        return Response(200, cut, {"request-id": request_id})


# ----- validation (pure functions) -----------------------------------------------------------


def _body_problem(body: Any) -> str | None:
    """The first reason the real API would reject this body with 400, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens: Input should be a positive integer"
    if not isinstance(body.get("stream", False), bool):
        return "stream: Input should be a valid boolean"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if not all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages):
        return "messages: each message needs a role of 'user' or 'assistant'"
    if messages[-1]["role"] != "user":
        return "messages: the final message must have role 'user'"
    return _tool_pairing_problem(messages)


def _tool_pairing_problem(messages: list[dict[str, Any]]) -> str | None:
    """Every tool_use must be answered by a tool_result in the next message, and vice versa."""
    for index, message in enumerate(messages):
        asked = _block_ids(message, "tool_use", "id") if message["role"] == "assistant" else set()
        following = messages[index + 1] if index + 1 < len(messages) else None
        answered = _block_ids(following, "tool_result", "tool_use_id") if following else set()
        missing = sorted(asked - answered)
        if missing:
            return (
                f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        previous = messages[index - 1] if index > 0 else None
        results = _block_ids(message, "tool_result", "tool_use_id")
        known = _block_ids(previous, "tool_use", "id") if previous else set()
        unexpected = sorted(results - known)
        if unexpected:
            return (
                f"messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message."
            )
    return None


def _block_ids(message: dict[str, Any], block_type: str, key: str) -> set[str]:
    content = message.get("content")
    if not isinstance(content, list):
        return set()
    return {
        str(block.get(key))
        for block in content
        if isinstance(block, dict) and block.get("type") == block_type
    }


def _error(
    status: int,
    error_type: str,
    message: str,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    return Response(status, body, {"request-id": request_id, **(headers or {})})


# ----- server-sent events ----------------------------------------------------------------


def _message(
    message_id: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    usage: Usage,
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage.to_json(),
    }


def _message_events(message: dict[str, Any]) -> list[bytes]:
    """`message` as the real API streams it: message_start (input and cache usage), each
    content block (start, deltas, stop), message_delta (stop_reason, output tokens),
    message_stop."""
    usage = message["usage"]
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events = _start_events(started)
    for index, block in enumerate(message["content"]):
        events += _block_events(index, block)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    final_usage = {"output_tokens": usage["output_tokens"]}
    events.append(_sse("message_delta", {"delta": delta, "usage": final_usage}))
    events.append(_sse("message_stop", {}))
    return events


def _start_events(started: dict[str, Any]) -> list[bytes]:
    """message_start (the message before any content or stop_reason) and a ping."""
    return [_sse("message_start", {"message": started}), _sse("ping", {})]


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    """A content block as content_block_start, its deltas and content_block_stop: text as
    text_delta pieces, tool input as input_json_delta pieces of its JSON; any other block
    type whole in its content_block_start."""
    if block["type"] == "text":
        start = {**block, "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
    elif block["type"] == "tool_use":
        start = {**block, "input": {}}
        pieces = _pieces(json.dumps(block["input"]))
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
    else:
        start, deltas = block, []
    return [
        _sse("content_block_start", {"index": index, "content_block": start}),
        *(_sse("content_block_delta", {"index": index, "delta": delta}) for delta in deltas),
        _sse("content_block_stop", {"index": index}),
    ]


def _pieces(text: str) -> list[str]:
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)] or [""]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event; `data` gets its `type` (the event name), as the API sends it."""
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode()


def _event_stream(
    events: list[bytes], request_id: str, *, missing: int = 0, hold_s: float = 0.0
) -> Response:
    body = RawBody(b"".join(events), "text/event-stream; charset=utf-8", missing, hold_s)
    return Response(200, body, {"request-id": request_id})

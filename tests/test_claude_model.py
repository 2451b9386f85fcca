"""`ClaudeModel` through the real anthropic SDK against `FakeAnthropic`: the streamed request
and reply, and which errors are worth a later attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming import MessageStream

from flows.commands import RunStop
from flows.fleet.agent import AgentError, ModelTurn
from flows.fleet.claude import ClaudeModel
from flows.fleet.models import Usage
from tests.fakes.anthropic_api import (
    AssistantTurn,
    DisconnectTurn,
    ErrorTurn,
    FakeAnthropic,
    StallTurn,
    text_turn,
    tool_turn,
)
from tests.fakes.anthropic_api import Usage as FakeUsage

MODEL = "claude-sonnet-4-6"
SECRET_KEY = "sk-ant-api03-SECRETSECRETSECRET"
HELLO: list[Any] = [{"role": "user", "content": "Fix issue #1"}]


pytestmark = pytest.mark.usefixtures("no_anthropic_env")


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=None) as server:  # any key: SECRET_KEY too
        yield server


@pytest.fixture
def clients() -> Iterator[list[anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []
    yield made
    for client in made:
        client.close()


def claude(
    fake: FakeAnthropic,
    clients: list[anthropic.Anthropic],
    model: str = MODEL,
    max_retries: int = 2,
    **options: Any,
) -> ClaudeModel:
    """A ClaudeModel on a client for `fake`; the SDK's default timeout unless given, as in
    production (the SDK checks `max_tokens` only then)."""
    client = anthropic.Anthropic(
        base_url=fake.base_url, api_key=SECRET_KEY, max_retries=max_retries, **options
    )
    clients.append(client)
    return ClaudeModel(client, model)


def complete(model: ClaudeModel, max_tokens: int = 1024, messages: list[Any] = HELLO) -> ModelTurn:
    return model.complete(system="You fix issues.", messages=messages, tools=[],
                          max_tokens=max_tokens, stop=RunStop())  # fmt: skip


def error_of(model: ClaudeModel, max_tokens: int = 1024) -> AgentError:
    with pytest.raises(AgentError) as error:
        complete(model, max_tokens)
    assert "SECRET" not in error.value.message
    return error.value


@pytest.mark.parametrize(
    ("model_name", "max_tokens"),
    [
        ("claude-sonnet-4-6", 32_000),  # over 10 minutes by the SDK's reckoning
        pytest.param(  # over its MODEL_NONSTREAMING_TOKENS
            "claude-opus-4-0", 8_193, marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")
        ),
    ],
)
def test_large_max_tokens_is_streamed(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic], model_name: str, max_tokens: int
) -> None:
    fake.add(text_turn("A long answer."))
    turn = complete(claude(fake, clients, model_name), max_tokens)

    assert turn.content == [{"type": "text", "text": "A long answer."}]
    (sent,) = fake.requests
    assert (sent["stream"], sent["max_tokens"], sent["model"]) == (True, max_tokens, model_name)


def test_streamed_tool_use_input_usage_and_cache_breakpoints(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    tool_input = {"path": "src/app/é.py", "old": "x = 1\n" * 20, "new": "x = 2", "n": [1, 2.5]}
    fake.add(tool_turn("edit_file", tool_input, block_id="toolu_1", text="Editing app.py now.",
                       usage=FakeUsage(1200, 340, 500, 7000)))  # fmt: skip
    turn = complete(claude(fake, clients, timeout=5.0))

    assert turn.content == [
        {"type": "text", "text": "Editing app.py now."},
        {"type": "tool_use", "id": "toolu_1", "name": "edit_file", "input": tool_input},
    ]
    assert turn.stop_reason == "tool_use"
    assert turn.usage == Usage(
        input_tokens=1200, output_tokens=340, cache_creation_input_tokens=500,
        cache_read_input_tokens=7000,
    )  # fmt: skip
    (sent,) = fake.requests
    assert sent["stream"] is True and sent["tools"] == []
    assert sent["system"] == [
        {"type": "text", "text": "You fix issues.", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Fix issue #1", "cache_control": {"type": "ephemeral"}}
    ]}]  # fmt: skip


@pytest.mark.parametrize("code", ["contract_spend_limit_reached", "enforced_spend_limit_reached"])
def test_spend_limit_is_permanent(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic], code: str
) -> None:
    fake.add(*[ErrorTurn(429, "Spend limit reached", error_code=code)] * 3)
    error = error_of(claude(fake, clients, max_retries=2, timeout=5.0))

    assert not error.transient
    assert "SpendLimitReachedError (HTTP 429, rate_limit_error): Spend limit reached" in (
        error.message
    )
    assert len(fake.requests) == 3  # the SDK's own retries still happen (no x-should-retry)


def test_ramp_limit_and_plain_rate_limit_stay_transient(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    fake.add(ErrorTurn(429, "Slow down", error_code="ramp_limit_exceeded"), ErrorTurn(429))
    model = claude(fake, clients, max_retries=0, timeout=5.0)
    ramp, plain = error_of(model), error_of(model)

    assert ramp.transient and "RampLimitExceededError (HTTP 429" in ramp.message
    assert plain.transient and "RateLimitError (HTTP 429" in plain.message


def test_mid_stream_overloaded_is_transient(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    fake.add(ErrorTurn(529, "Overloaded", mid_stream=True), text_turn("never sent"))
    error = error_of(claude(fake, clients, max_retries=2, timeout=5.0))

    assert error.transient
    assert error.message == (
        "APIStatusError (error event in the stream, overloaded_error): Overloaded"
        " [request req_fake_0001]"
    )
    assert len(fake.requests) == 1  # once the stream has begun, the SDK does not retry


@pytest.mark.parametrize(
    ("error_type", "error_code", "transient"),
    [
        ("api_error", None, True),
        ("rate_limit_error", None, True),
        ("timeout_error", None, True),
        ("rate_limit_error", "enforced_spend_limit_reached", False),
        ("invalid_request_error", None, False),
        ("permission_error", None, False),
    ],
)
def test_mid_stream_error_kind_follows_its_type(
    fake: FakeAnthropic,
    clients: list[anthropic.Anthropic],
    error_type: str,
    error_code: str | None,
    transient: bool,
) -> None:
    fake.add(ErrorTurn(message=f"key {SECRET_KEY} failed", error_type=error_type,
                       error_code=error_code, mid_stream=True))  # fmt: skip
    error = error_of(claude(fake, clients, timeout=5.0))

    assert error.transient is transient
    assert f"{error_type}): key [redacted] failed" in error.message


def test_connection_lost_mid_stream_is_transient(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    fake.add(DisconnectTurn(), text_turn("never sent"))
    error = error_of(claude(fake, clients, timeout=5.0))

    assert error.transient
    assert error.message.startswith("connection lost while streaming the reply (RemoteProtocol")
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (0, "the reply stream ended before a message began"),
        (5, "the reply stream ended before the reply did"),  # inside the tool call's input
    ],
)
def test_a_stream_that_ends_early_is_transient_and_runs_nothing(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic], events: int, message: str
) -> None:
    """A proxy may close the response properly in the middle: no error from the SDK, a
    message without a stop reason, whose last tool call holds part of its input."""
    call = tool_turn("run_command", {"argv": ["sh", "cleanup.sh", "--dry-run"]})
    fake.add(AssistantTurn(call.content, "tool_use", stream_events=events))
    error = error_of(claude(fake, clients, timeout=5.0))

    assert error.transient and error.message == message


def test_argument_the_sdk_refuses_is_a_permanent_error(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    fake.add(text_turn("never sent"))
    model = claude(fake, clients, timeout=5.0)
    with pytest.raises(AgentError) as error:
        complete(model, messages=[{"role": "user", "content": "lone \udcff surrogate"}])

    assert not error.value.transient
    assert error.value.message.startswith(
        "the SDK rejected the request or its reply (UnicodeEncodeError: 'utf-8' codec can't encode"
    )
    assert fake.requests == []


def test_a_reply_that_breaks_off_reports_what_it_used(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    """Its input was processed and counts against the budget: the usage its message_start
    reported comes with the error (none when the request failed before any reply)."""
    started = FakeUsage(input_tokens=4000, output_tokens=1, cache_read_input_tokens=9000)
    fake.add(
        ErrorTurn(529, "Overloaded", mid_stream=True, usage=started),
        DisconnectTurn(usage=started),
        ErrorTurn(529, "Overloaded"),  # an HTTP error: no reply began
    )
    model = claude(fake, clients, max_retries=0, timeout=5.0)
    expected = Usage(input_tokens=4000, output_tokens=1, cache_read_input_tokens=9000)

    assert error_of(model).usage == expected
    assert error_of(model).usage == expected
    assert error_of(model).usage is None


def test_a_reply_cut_short_counts_what_it_wrote(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    """The API reports output tokens at the end only: a reply that stops before counts its
    text at about 4 characters a token."""
    text = "x" * 4000
    # the stream ends before message_delta (the output tokens) and message_stop
    fake.add(AssistantTurn([{"type": "text", "text": text}], usage=FakeUsage(input_tokens=50),
                           stream_events=-2))  # fmt: skip
    error = error_of(claude(fake, clients, timeout=5.0))

    assert error.message == "the reply stream ended before the reply did"
    assert error.usage == Usage(input_tokens=50, output_tokens=1000)


def test_a_reply_cut_inside_a_tool_call_counts_the_input_it_sent(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic]
) -> None:
    """The SDK's parse of a partial tool input leaves out an unfinished string: the raw
    JSON received is what counts (40,000 characters of file content, about 10,000 tokens)."""
    call = tool_turn("write_file", {"path": "big.txt", "content": "x" * 40_000})
    # cut before the input's last piece, content_block_stop, message_delta and message_stop
    fake.add(AssistantTurn(call.content, "tool_use", stream_events=-4))
    error = error_of(claude(fake, clients, timeout=5.0))

    assert error.usage is not None and 9_990 <= error.usage.output_tokens <= 10_020


def test_a_stop_never_cuts_a_connection_the_reply_handed_on(
    fake: FakeAnthropic, clients: list[anthropic.Anthropic], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A's reply is read to its end, which hands its connection back to the client's
    pool; B, on the same client, takes it. A stop of run A from then on must not cut B."""
    fake.add(text_turn("A's reply"), StallTurn(seconds=3))
    model = claude(fake, clients, max_retries=0, timeout=30)
    stop_a, stop_b = RunStop(), RunStop()
    times: dict[str, float] = {}

    def run_b() -> None:
        try:
            model.complete(system="s", messages=HELLO, tools=[], max_tokens=100, stop=stop_b)
        except AgentError:  # its stream stalls, then breaks off
            times["b ended"] = time.monotonic()

    final_message = MessageStream.get_final_message

    def with_b_started(stream: MessageStream) -> Any:
        """A, its reply read: B starts streaming, then run A is stopped."""
        if "a stopped" not in times:
            b = threading.Thread(target=run_b)
            b.start()
            while len(fake.requests) < 2:
                time.sleep(0.01)
            time.sleep(0.3)  # B streams, on A's connection if A handed it back already
            times["a stopped"] = time.monotonic()
            stop_a.stop("interrupted (SIGTERM)")
            b.join(15)
        return final_message(stream)

    monkeypatch.setattr(MessageStream, "get_final_message", with_b_started)
    turn = model.complete(system="s", messages=HELLO, tools=[], max_tokens=100, stop=stop_a)

    assert turn.content == [{"type": "text", "text": "A's reply"}]
    assert times["b ended"] - times["a stopped"] > 2, "run A's stop cut B's reply short"

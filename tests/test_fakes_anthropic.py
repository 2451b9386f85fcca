"""The real anthropic SDK against `FakeAnthropic` (loopback only, no internet)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.fakes.anthropic_api import (
    DisconnectTurn,
    ErrorTurn,
    FakeAnthropic,
    Usage,
    text_turn,
    tool_turn,
)

MODEL = "claude-test-model"
TOOLS: list[Any] = [
    {
        "name": "run_tests",
        "description": "Run the test suite",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]
HELLO: list[Any] = [{"role": "user", "content": "Fix issue #1"}]
Connect = Callable[..., anthropic.Anthropic]


pytestmark = pytest.mark.usefixtures("no_anthropic_env")


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="test-key") as server:
        yield server


@pytest.fixture
def connect(fake: FakeAnthropic) -> Iterator[Connect]:
    """Make SDK clients for the fake (key "test-key" unless overridden); closed at teardown."""
    clients: list[anthropic.Anthropic] = []

    def make(max_retries: int = 2, **kwargs: Any) -> anthropic.Anthropic:
        options: dict[str, Any] = {"api_key": "test-key", "base_url": fake.base_url, **kwargs}
        clients.append(anthropic.Anthropic(max_retries=max_retries, timeout=5.0, **options))
        return clients[-1]

    yield make
    for api in clients:
        api.close()


def ask(api: anthropic.Anthropic, messages: list[Any] = HELLO) -> anthropic.types.Message:
    return api.messages.create(
        model=MODEL, max_tokens=1024, system="You fix issues.", tools=TOOLS, messages=messages
    )


def test_tool_use_turn_then_end_turn(fake: FakeAnthropic, connect: Connect) -> None:
    fake.add(
        tool_turn("run_tests", {"path": "tests"}, block_id="toolu_01", text="Running tests"),
        text_turn("All green", usage=Usage(1200, 34, 500, 7000)),
    )
    api = connect()

    first = ask(api)
    tool_use = first.content[1]
    assert first.stop_reason == "tool_use" and first.model == MODEL
    assert isinstance(tool_use, anthropic.types.ToolUseBlock)
    assert (tool_use.id, tool_use.name) == ("toolu_01", "run_tests")
    assert tool_use.input == {"path": "tests"}

    result = {"type": "tool_result", "tool_use_id": tool_use.id, "content": "3 passed"}
    follow_up = [*HELLO, {"role": "assistant", "content": first.content}]
    second = ask(api, [*follow_up, {"role": "user", "content": [result]}])

    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "All green"
    usage = second.usage
    assert (usage.input_tokens, usage.output_tokens) == (1200, 34)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (500, 7000)
    sent = fake.requests
    assert len(sent) == 2 and fake.remaining == 0
    assert (sent[0]["model"], sent[0]["max_tokens"], sent[0]["system"]) == (
        MODEL,
        1024,
        "You fix issues.",
    )
    assert sent[0]["tools"][0]["name"] == "run_tests"
    assert sent[1]["messages"][-1]["content"][0]["tool_use_id"] == "toolu_01"


def ask_streaming(api: anthropic.Anthropic, messages: list[Any] = HELLO) -> anthropic.types.Message:
    with api.messages.stream(
        model=MODEL, max_tokens=1024, system="You fix issues.", tools=TOOLS, messages=messages
    ) as stream:
        return stream.get_final_message()


def test_streamed_turn_is_the_same_message_in_several_deltas(
    fake: FakeAnthropic, connect: Connect
) -> None:
    tool_input = {"path": "tests/unit/test_é.py", "args": ["-x", "-q"], "depth": 2}
    turn = tool_turn("run_tests", tool_input, block_id="toolu_01", text="Running the tests now")
    fake.add(turn, turn)
    api = connect()
    whole = ask(api)

    with api.messages.create(
        model=MODEL, max_tokens=1024, tools=TOOLS, messages=HELLO, stream=True
    ) as events:
        kinds = [(event.type, getattr(getattr(event, "delta", None), "type", None))
                 for event in events]  # fmt: skip
    assert kinds[:2] == [("message_start", None), ("content_block_start", None)]
    assert kinds[-2:] == [("message_delta", None), ("message_stop", None)]
    assert kinds.count(("content_block_delta", "text_delta")) > 1
    assert kinds.count(("content_block_delta", "input_json_delta")) > 1
    assert fake.requests[-1]["stream"] is True and "stream" not in fake.requests[0]

    fake.add(turn)
    streamed = ask_streaming(api)
    assert streamed.model_dump() == {**whole.model_dump(), "id": streamed.id}


def test_streamed_usage_adds_up_like_the_real_api(fake: FakeAnthropic, connect: Connect) -> None:
    fake.add(text_turn("All green", usage=Usage(1200, 34, 500, 7000)))
    usage = ask_streaming(connect()).usage
    assert (usage.input_tokens, usage.output_tokens) == (1200, 34)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (500, 7000)


def test_mid_stream_error_is_an_error_event_in_a_200_stream(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(ErrorTurn(529, mid_stream=True), text_turn("never sent"))
    with pytest.raises(anthropic.APIStatusError) as error:
        ask_streaming(connect(max_retries=2))
    assert error.value.status_code == 200  # the SDK raises it with the stream's status
    assert (error.value.type, error.value.api_message) == ("overloaded_error", "Overloaded")
    assert error.value.request_id == "req_fake_0001"
    assert len(fake.requests) == 1  # the stream had begun: past the SDK's retries


def test_mid_stream_error_turn_without_streaming_is_a_plain_error(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(ErrorTurn(529, mid_stream=True))
    with pytest.raises(anthropic.OverloadedError):
        ask(connect(max_retries=0))


def test_spend_limit_is_a_429_with_its_error_code(fake: FakeAnthropic, connect: Connect) -> None:
    code = "contract_spend_limit_reached"
    fake.add(*[ErrorTurn(429, "Spend limit reached", error_code=code)] * 3)
    with pytest.raises(anthropic.ContractSpendLimitReachedError) as error:
        ask_streaming(connect(max_retries=2))
    assert isinstance(error.value, anthropic.RateLimitError) and error.value.error_code == code
    assert len(fake.requests) == 3  # the SDK retries any 429 that lacks x-should-retry: false


def test_disconnect_mid_stream_escapes_the_sdk_as_a_transport_error(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(DisconnectTurn(), text_turn("never sent"))
    with pytest.raises(httpx2.RemoteProtocolError, match="peer closed connection"):
        ask_streaming(connect(max_retries=2))
    assert len(fake.requests) == 1


def test_disconnect_without_streaming_is_a_connection_error(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(DisconnectTurn())
    with pytest.raises(anthropic.APIConnectionError):  # which the SDK retries (not here)
        ask(connect(max_retries=0))


def test_overloaded_then_success_is_retried_by_the_sdk(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(ErrorTurn(529), text_turn("ok"))
    started = time.monotonic()
    reply = ask(connect(max_retries=2))
    assert reply.content[0].type == "text" and reply.content[0].text == "ok"
    assert len(fake.requests) == 2
    assert time.monotonic() - started < 2  # retry-after-ms keeps the SDK's backoff short


def test_overloaded_without_retries_raises(fake: FakeAnthropic, connect: Connect) -> None:
    fake.add(ErrorTurn(529), text_turn("never sent"))
    with pytest.raises(anthropic.OverloadedError) as error:
        ask(connect(max_retries=0))
    assert isinstance(error.value, anthropic.InternalServerError)
    assert error.value.status_code == 529
    assert isinstance(error.value.body, dict)
    assert error.value.body["error"]["type"] == "overloaded_error"
    assert fake.remaining == 1


def test_rate_limit_without_retries_raises(fake: FakeAnthropic, connect: Connect) -> None:
    fake.add(ErrorTurn(429, "Number of request tokens has exceeded your rate limit"))
    with pytest.raises(anthropic.RateLimitError) as error:
        ask(connect(max_retries=0))
    assert error.value.response.headers["retry-after-ms"] == "10"


def test_missing_or_wrong_key_is_authentication_error(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(text_turn("never sent"))
    no_key = connect(max_retries=0, default_headers={"Authorization": anthropic.Omit()})
    with pytest.raises(anthropic.AuthenticationError, match="x-api-key header is required"):
        ask(no_key)
    with pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"):
        ask(connect(max_retries=0, api_key="wrong-key"))
    assert fake.remaining == 1


def test_base_url_and_key_from_environment(
    fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    fake.add(text_turn("from env"))
    with anthropic.Anthropic(max_retries=0, timeout=5.0) as api:
        reply = api.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert reply.content[0].type == "text" and reply.content[0].text == "from env"


def test_unanswered_tool_use_is_rejected_without_consuming_a_turn(
    fake: FakeAnthropic, connect: Connect
) -> None:
    fake.add(text_turn("unused"))
    tool_use = {"type": "tool_use", "id": "toolu_09", "name": "run_tests", "input": {}}
    unanswered = [{"role": "assistant", "content": [tool_use]}, {"role": "user", "content": "?"}]
    with pytest.raises(anthropic.BadRequestError, match="toolu_09"):
        ask(connect(), [*HELLO, *unanswered])
    with pytest.raises(anthropic.BadRequestError, match="final message must have role 'user'"):
        ask(connect(), [*HELLO, {"role": "assistant", "content": "prefill"}])
    assert fake.remaining == 1


def test_missing_required_fields_are_rejected(fake: FakeAnthropic) -> None:
    body = json.dumps({"model": MODEL, "messages": HELLO}).encode()
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    request = urllib.request.Request(f"{fake.base_url}/v1/messages", body, headers)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    with error.value:
        assert error.value.code == 400
        assert json.load(error.value)["error"] == {
            "type": "invalid_request_error",
            "message": "max_tokens: Field required",
        }


def test_non_boolean_stream_is_rejected(fake: FakeAnthropic) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 1, "messages": HELLO, "stream": "yes"})
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    request = urllib.request.Request(f"{fake.base_url}/v1/messages", body.encode(), headers)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    with error.value:
        assert error.value.code == 400
        assert (
            json.load(error.value)["error"]["message"] == "stream: Input should be a valid boolean"
        )


def test_exhausted_script_fails_fast_with_a_clear_message(
    fake: FakeAnthropic, connect: Connect
) -> None:
    with pytest.raises(anthropic.InternalServerError, match="script exhausted"):
        ask(connect(max_retries=2))
    assert len(fake.requests) == 1  # x-should-retry: false stops the SDK's retries

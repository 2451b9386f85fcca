"""The agent loop on a scripted model and on the real SDK against FakeAnthropic; costs;
the task prompt."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import trustme

from flows.commands import RunStop
from flows.fleet.agent import (
    ELIDED_RESULT,
    AgentError,
    ModelTurn,
    ScriptedModel,
    ScriptExhaustedError,
    build_task_prompt,
    load_system_prompt,
    run_agent,
)
from flows.fleet.claude import ClaudeModel, StoppableAnthropic
from flows.fleet.cost import CostMeter, Price, UnknownModelError, cost_usd, price_for
from flows.fleet.models import Issue, Usage
from flows.fleet.simulated import SimulatedModel
from flows.fleet.tools import Toolbox
from tests.fakes.anthropic_api import ErrorTurn, FakeAnthropic, StallTurn, text_turn, tool_turn
from tests.fakes.anthropic_api import Usage as FakeUsage

MODEL = "claude-sonnet-4-6"  # $3 in, $15 out, $3.75 cache write, $0.30 cache read per MTok
SECRET_KEY = "sk-ant-api03-SECRETSECRETSECRET"


pytestmark = pytest.mark.usefixtures("no_anthropic_env")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    directory = tmp_path / "workspace"
    directory.mkdir()
    (directory / "app.py").write_text("x = 1\n")
    return directory


@pytest.fixture
def toolbox(workspace: Path) -> Toolbox:
    return Toolbox(workspace, command_timeout=10, max_output=5000)


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="test-key") as server:
        yield server


def claude(
    fake: FakeAnthropic, api_key: str = "test-key", max_retries: int = 2, timeout: float = 5.0
) -> ClaudeModel:
    client = anthropic.Anthropic(
        base_url=fake.base_url, api_key=api_key, max_retries=max_retries, timeout=timeout
    )
    return ClaudeModel(client, MODEL)


def run(model: Any, toolbox: Toolbox, meter: CostMeter, **options: Any) -> Any:
    settings: dict[str, Any] = {"max_turns": 10, "budget_usd": 5.0, **options}
    return run_agent(
        model, toolbox, "Fix it.", system="You fix issues.", model_name=MODEL, meter=meter,
        **settings,
    )  # fmt: skip


def tool_use(
    name: str, input: dict[str, Any], block_id: str, usage: Usage | None = None
) -> ModelTurn:
    block = {"type": "tool_use", "id": block_id, "name": name, "input": input}
    return ModelTurn([block], "tool_use", usage or Usage(input_tokens=10, output_tokens=5))


def final(text: str, usage: Usage | None = None) -> ModelTurn:
    return ModelTurn([{"type": "text", "text": text}], "end_turn", usage or Usage(output_tokens=5))


# ----- the loop on a scripted model ------------------------------------------------------------


def test_scripted_model_writes_a_file_then_ends(toolbox: Toolbox, workspace: Path) -> None:
    model = ScriptedModel(
        [
            tool_use("write_file", {"path": "src/hello.txt", "content": "hi\n"}, "toolu_1"),
            final("Added src/hello.txt"),
        ]
    )
    meter = CostMeter()
    result = run(model, toolbox, meter)

    assert result.ok and result.error is None
    assert result.summary == "Added src/hello.txt"
    assert result.turns == 2 and meter.calls == 2
    assert result.usage == Usage(input_tokens=10, output_tokens=10)
    assert (workspace / "src" / "hello.txt").read_text() == "hi\n"
    sent = model.calls[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "Fix it."
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
         "content": "wrote 3 bytes to src/hello.txt"},
    ]  # fmt: skip
    assert model.calls[0]["system"] == "You fix issues."
    assert {t["name"] for t in model.calls[0]["tools"]} >= {"read_file", "run_command"}


def test_refused_tool_call_is_reported_and_the_loop_continues(toolbox: Toolbox) -> None:
    model = ScriptedModel(
        [
            tool_use("read_file", {"path": "/etc/passwd"}, "toolu_bad"),
            tool_use("read_file", {"path": "../../../etc/passwd"}, "toolu_worse"),
            final("Could not read it."),
        ]
    )
    result = run(model, toolbox, CostMeter())

    assert result.ok and result.turns == 3
    for call, block_id in [(1, "toolu_bad"), (2, "toolu_worse")]:
        (tool_result,) = model.calls[call]["messages"][-1]["content"]
        assert tool_result["tool_use_id"] == block_id and tool_result["is_error"] is True
        assert '"error"' in tool_result["content"] and "root:" not in tool_result["content"]


def test_every_tool_use_of_a_turn_gets_its_result(toolbox: Toolbox) -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": "Looking around."},
        {"type": "tool_use", "id": "toolu_a", "name": "list_files", "input": {}},
        {"type": "tool_use", "id": "toolu_b", "name": "nope", "input": {}},
    ]
    model = ScriptedModel([ModelTurn(blocks, "tool_use", Usage()), final("done")])
    assert run(model, toolbox, CostMeter()).ok
    results = model.calls[1]["messages"][-1]["content"]
    assert [(r["tool_use_id"], r["is_error"]) for r in results] == [
        ("toolu_a", False), ("toolu_b", True),
    ]  # fmt: skip
    assert results[0]["content"] == "app.py"


def test_budget_cap_stops_the_loop(toolbox: Toolbox, workspace: Path) -> None:
    expensive = Usage(input_tokens=100_000)  # $0.30 each
    model = ScriptedModel(
        [
            tool_use("list_files", {}, "toolu_1", expensive),
            tool_use("write_file", {"path": "late.txt", "content": "x"}, "toolu_2", expensive),
            final("never reached"),
        ]
    )
    meter = CostMeter()
    result = run(model, toolbox, meter, budget_usd=0.5)

    assert not result.ok and result.turns == 2 and len(model.calls) == 2
    assert result.error is not None and "budget exceeded" in result.error
    assert result.cost_usd == pytest.approx(0.6) and meter.total_usd == pytest.approx(0.6)
    assert not (workspace / "late.txt").exists()  # no tool runs once over budget


def test_max_turns_stops_the_loop(toolbox: Toolbox) -> None:
    model = ScriptedModel([tool_use("list_files", {}, f"toolu_{i}") for i in range(5)])
    result = run(model, toolbox, CostMeter(), max_turns=3)

    assert not result.ok and result.turns == 3 and len(model.calls) == 3
    assert result.error is not None and "max_turns" in result.error


def test_output_cut_at_max_tokens_asks_to_continue(toolbox: Toolbox) -> None:
    cut = ModelTurn([{"type": "text", "text": "Half a sum"}], "max_tokens", Usage())
    model = ScriptedModel([cut, final("mary.")])
    result = run(model, toolbox, CostMeter())
    assert result.ok and result.summary == "Half a summary." and result.turns == 2
    assert model.calls[1]["messages"][-1]["role"] == "user"


def test_a_tool_call_cut_at_max_tokens_is_not_run(toolbox: Toolbox, workspace: Path) -> None:
    """The last tool_use of a reply cut at the output limit may hold half its input: a
    file written from it would be silently cut short."""
    partial = {"path": "app.py", "content": "def a():\n    return 1\n\ndef b():\n"}
    cut = ModelTurn([{"type": "tool_use", "id": "toolu_1", "name": "write_file",
                      "input": partial}], "max_tokens", Usage())  # fmt: skip
    model = ScriptedModel([cut, final("Stopped.")])
    result = run(model, toolbox, CostMeter())
    assert result.ok and (workspace / "app.py").read_text() == "x = 1\n"
    [answer] = model.calls[1]["messages"][-1]["content"]
    assert answer["tool_use_id"] == "toolu_1" and answer["is_error"]
    assert "cut off at the output token limit" in answer["content"]


def test_text_cut_before_a_tool_call_is_not_in_the_summary(toolbox: Toolbox) -> None:
    cut = ModelTurn([{"type": "text", "text": "Let me look first and then I will"}],
                    "max_tokens", Usage())  # fmt: skip
    model = ScriptedModel([cut, tool_use("list_files", {}, "toolu_1"), final("Fixed app.py.")])
    assert run(model, toolbox, CostMeter()).summary == "Fixed app.py."


def test_tool_calls_of_a_reply_that_did_not_stop_for_them_are_not_run(
    toolbox: Toolbox, workspace: Path
) -> None:
    """A stream that ended early has no stop reason: its last call may be partial too."""
    partial = {"type": "tool_use", "id": "toolu_1", "name": "write_file",
               "input": {"path": "app.py", "content": "def a("}}  # fmt: skip
    model = ScriptedModel([ModelTurn([partial], None, Usage()), final("Stopped.")])
    assert run(model, toolbox, CostMeter()).ok
    assert (workspace / "app.py").read_text() == "x = 1\n"
    assert model.calls[1]["messages"][-1]["content"][0]["is_error"]


def test_a_full_context_window_ends_the_attempt_clearly(toolbox: Toolbox) -> None:
    full = ModelTurn([{"type": "text", "text": "..."}], "model_context_window_exceeded", Usage())
    model = ScriptedModel([tool_use("list_files", {}, "toolu_1"), full])
    result = run(model, toolbox, CostMeter())
    assert not result.ok and len(model.calls) == 2
    assert result.error == "the conversation outgrew the model's context window (2 turns)"


def test_old_tool_results_are_elided_to_bound_the_history(
    toolbox: Toolbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flows.fleet.agent.HISTORY_BUDGET_CHARS", 10_000)
    (workspace / "big.txt").write_text("line of text\n" * 150)  # 2,400 chars per read
    reads = [tool_use("read_file", {"path": "big.txt"}, f"toolu_{i}") for i in range(12)]
    model = ScriptedModel([*reads, final("Read it all.")])
    assert run(model, toolbox, CostMeter(), max_turns=20).ok

    def results(call: dict[str, Any]) -> list[str]:
        return [block["content"] for message in call["messages"][1:] if message["role"] == "user"
                for block in message["content"]]  # fmt: skip

    sizes = [sum(len(text) for text in results(call)) for call in model.calls]
    assert max(sizes) <= 10_000 + 2_400  # the budget, plus the newest result
    last = results(model.calls[-1])
    assert last[0] == ELIDED_RESULT and "line of text" in last[-1]
    elided_at = [sum(text == ELIDED_RESULT for text in results(call)) for call in model.calls]
    assert elided_at == sorted(elided_at) and len(set(elided_at)) <= 4  # elided in batches


def test_results_the_model_has_not_seen_are_never_elided(
    toolbox: Toolbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over budget, the oldest results go; those of the turn just run, all of them, stay."""
    monkeypatch.setattr("flows.fleet.agent.HISTORY_BUDGET_CHARS", 10_000)
    (workspace / "big.txt").write_text("line of text\n" * 150)
    read = {"type": "tool_use", "name": "read_file", "input": {"path": "big.txt"}}
    parallel = ModelTurn([{**read, "id": f"toolu_p{i}"} for i in range(6)], "tool_use", Usage())
    model = ScriptedModel([tool_use("read_file", {"path": "big.txt"}, "toolu_1"), parallel,
                           final("Done.")])  # fmt: skip
    assert run(model, toolbox, CostMeter()).ok
    last = model.calls[-1]["messages"]
    assert last[2]["content"][0]["content"] == ELIDED_RESULT  # the first turn's result
    assert all("line of text" in block["content"] for block in last[-1]["content"])


def test_permanent_and_transient_errors_from_a_scripted_model(toolbox: Toolbox) -> None:
    permanent = ScriptedModel([AgentError("permanent", "bad request")])
    result = run(permanent, toolbox, CostMeter())
    assert not result.ok and result.error == "permanent model error: bad request"

    transient = ScriptedModel([AgentError("transient", "overloaded")])
    with pytest.raises(AgentError) as error:
        run(transient, toolbox, CostMeter())
    assert error.value.transient


def test_what_a_failed_call_used_counts_against_the_budget(toolbox: Toolbox) -> None:
    """A reply that broke off (an error after it began) used its input: the meter has it,
    whether the error ends the run (permanent) or is raised for a retry (transient)."""
    used = Usage(input_tokens=100_000, output_tokens=1)
    meter = CostMeter()
    broke_off = ScriptedModel([AgentError("permanent", "cut", used)])
    assert not run(broke_off, toolbox, meter).ok
    cost = meter.total_usd
    assert meter.usage == used and cost > 0
    with pytest.raises(AgentError):
        run(ScriptedModel([AgentError("transient", "overloaded", used)]), toolbox, meter)
    assert meter.usage == used + used and meter.total_usd == pytest.approx(2 * cost)


def test_no_call_is_made_without_budget_left(toolbox: Toolbox) -> None:
    """A retry after attempts that spent the issue's budget makes no call at all."""
    model = ScriptedModel([final("unused")])
    result = run(model, toolbox, CostMeter(), budget_usd=0.0)
    assert not result.ok and result.error.startswith("budget exceeded")
    assert model.calls == []


def test_exhausted_script_raises_a_clear_error(toolbox: Toolbox) -> None:
    model = ScriptedModel([tool_use("list_files", {}, "toolu_1")])
    with pytest.raises(ScriptExhaustedError, match="has 1 turns; call 2 has none"):
        run(model, toolbox, CostMeter())


def test_unknown_model_fails_before_any_call(toolbox: Toolbox) -> None:
    model = ScriptedModel([final("unused")])
    with pytest.raises(UnknownModelError, match="claude-unknown-9"):
        run_agent(model, toolbox, "x", system="s", max_turns=1, budget_usd=1,
                  model_name="claude-unknown-9", meter=CostMeter())  # fmt: skip
    assert model.calls == []


# ----- the real SDK against FakeAnthropic --------------------------------------------------------


def test_claude_model_reads_edits_and_ends_with_exact_cost(
    fake: FakeAnthropic, toolbox: Toolbox, workspace: Path
) -> None:
    fake.add(
        tool_turn("read_file", {"path": "app.py"}, block_id="toolu_read",
                  usage=FakeUsage(100, 20, 50, 0)),
        tool_turn("edit_file", {"path": "app.py", "old": "x = 1", "new": "x = 2"},
                  block_id="toolu_edit", text="Now the fix.", usage=FakeUsage(200, 30, 0, 50)),
        text_turn("Set x to 2 in app.py.", usage=FakeUsage(300, 40, 0, 150)),
    )  # fmt: skip
    meter = CostMeter()
    result = run(claude(fake), toolbox, meter)

    assert result.ok and result.summary == "Set x to 2 in app.py." and result.turns == 3
    assert (workspace / "app.py").read_text() == "x = 2\n"
    assert result.usage == Usage(
        input_tokens=600, output_tokens=90, cache_creation_input_tokens=50,
        cache_read_input_tokens=200,
    )  # fmt: skip
    expected = (600 * 3 + 90 * 15 + 50 * 3.75 + 200 * 0.30) / 1_000_000
    assert result.cost_usd == pytest.approx(expected, rel=1e-12)
    assert meter.total_usd == pytest.approx(expected, rel=1e-12) and meter.calls == 3

    first, second, third = fake.requests
    assert first["model"] == MODEL and first["system"][0]["text"] == "You fix issues."
    assert {tool["name"] for tool in first["tools"]} >= {"read_file", "edit_file"}
    (read_result,) = second["messages"][-1]["content"]
    assert read_result["tool_use_id"] == "toolu_read" and read_result["is_error"] is False
    assert "x = 1" in read_result["content"]
    assert third["messages"][-2]["content"][1]["id"] == "toolu_edit"
    (edit_result,) = third["messages"][-1]["content"]
    assert (edit_result["tool_use_id"], edit_result["content"]) == ("toolu_edit", "edited app.py")


def test_prompt_cache_breakpoints(fake: FakeAnthropic, toolbox: Toolbox) -> None:
    fake.add(tool_turn("list_files", {}), tool_turn("list_files", {}), text_turn("done"))
    assert run(claude(fake), toolbox, CostMeter()).ok

    last = fake.requests[-1]
    assert last["system"][0]["cache_control"] == {"type": "ephemeral"}
    marked = [
        (index, block_index)
        for index, message in enumerate(last["messages"])
        for block_index, block in enumerate(message["content"])
        if "cache_control" in block
    ]
    assert marked == [(len(last["messages"]) - 1, 0)]  # one breakpoint: the newest block


def test_overloaded_then_success_is_retried_by_the_sdk_and_counted_once(
    fake: FakeAnthropic, toolbox: Toolbox
) -> None:
    fake.add(ErrorTurn(529), text_turn("done", usage=FakeUsage(1000, 100)))
    meter = CostMeter()
    result = run(claude(fake, max_retries=2), toolbox, meter)

    assert result.ok and result.turns == 1 and len(fake.requests) == 2
    assert meter.calls == 1
    assert result.cost_usd == pytest.approx((1000 * 3 + 100 * 15) / 1_000_000, rel=1e-12)


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 from a throwaway CA, and a client
    context that trusts that CA."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stop_cuts_a_reply_being_streamed_short_and_counts_it(
    toolbox: Toolbox, scheme: str
) -> None:
    """Ctrl-C while Claude writes a long reply: the agent stops within moments, not when
    the reply ends (here: 60 s of silence after it began), and what it used counts; over
    TLS too (the real API), where the cut must not tear the TLS layer from under the read."""
    server_tls, client_tls = tls_contexts() if scheme == "https" else (None, None)
    with FakeAnthropic(tls=server_tls) as fake:
        fake.add(StallTurn(seconds=60, usage=FakeUsage(input_tokens=1000, output_tokens=1)))
        client = anthropic.Anthropic(
            base_url=fake.base_url, api_key="test-key", max_retries=0, timeout=120,
            http_client=anthropic.DefaultHttpxClient(verify=client_tls or True),
        )  # fmt: skip
        stop = RunStop()
        meter = CostMeter()
        threading.Timer(0.5, stop.stop, args=("interrupted (SIGTERM)",)).start()
        started = time.monotonic()
        with client:
            result = run(ClaudeModel(client, MODEL), toolbox, meter, stop=stop)

    assert fake.base_url.startswith(f"{scheme}://")
    assert time.monotonic() - started < 5
    assert not result.ok and result.error == "stopped: interrupted (SIGTERM)"
    assert len(fake.requests) == 1
    assert result.cost_usd == pytest.approx((1000 * 3 + 1 * 15) / 1_000_000, rel=1e-12)
    assert meter.total_usd == result.cost_usd


def test_a_stop_ends_the_sdks_wait_to_retry_a_call(fake: FakeAnthropic, toolbox: Toolbox) -> None:
    """Overloaded, the API asks for a retry in 30 s, and the run is stopped meanwhile: the
    agent stops within moments and makes no further request."""
    fake.add(ErrorTurn(529, retry_after_ms=30_000), text_turn("never sent"))
    stop = RunStop()
    threading.Timer(0.5, stop.stop, args=("interrupted (SIGTERM)",)).start()
    started = time.monotonic()
    with StoppableAnthropic(base_url=fake.base_url, api_key="test-key", max_retries=2) as client:
        result = run(ClaudeModel(client, MODEL), toolbox, CostMeter(), stop=stop)

    assert time.monotonic() - started < 5  # not the 30 s the API asked for
    assert result.error == "stopped: interrupted (SIGTERM)" and len(fake.requests) == 1


def test_the_stoppable_client_retries_as_the_sdk_does(
    fake: FakeAnthropic, toolbox: Toolbox
) -> None:
    fake.add(ErrorTurn(529, retry_after_ms=300), text_turn("done"))
    started = time.monotonic()
    with StoppableAnthropic(base_url=fake.base_url, api_key="test-key", max_retries=2) as client:
        result = run(ClaudeModel(client, MODEL), toolbox, CostMeter())

    assert result.ok and len(fake.requests) == 2
    assert time.monotonic() - started >= 0.3  # the wait the API asked for


def test_a_reply_cut_as_it_begins_over_tls_still_counts(toolbox: Toolbox) -> None:
    """The stop comes while the request is under way: the reply is cut as soon as it
    begins. Its first event, already received, still counts: the cut leaves the TLS layer
    to the read (dropping it, the read would take the encrypted bytes for the reply)."""
    server_tls, client_tls = tls_contexts()
    stop = RunStop()

    def stop_once_the_reply_began(response: Any) -> None:  # its headers are in
        time.sleep(0.2)  # and by now its first event, sent right after them, too
        stop.stop("interrupted (SIGTERM)")

    meter = CostMeter()
    with FakeAnthropic(tls=server_tls) as fake:
        fake.add(StallTurn(seconds=60, usage=FakeUsage(input_tokens=1000, output_tokens=1)))
        http = anthropic.DefaultHttpxClient(
            verify=client_tls, event_hooks={"response": [stop_once_the_reply_began]}
        )
        with anthropic.Anthropic(base_url=fake.base_url, api_key="test-key", max_retries=0,
                                 timeout=120, http_client=http) as client:  # fmt: skip
            result = run(ClaudeModel(client, MODEL), toolbox, meter, stop=stop)

    assert result.error == "stopped: interrupted (SIGTERM)"
    assert result.cost_usd == pytest.approx((1000 * 3 + 1 * 15) / 1_000_000, rel=1e-12)


def test_a_stopped_run_makes_no_model_call(toolbox: Toolbox) -> None:
    stop = RunStop()
    stop.stop("interrupted (SIGINT)")
    model = ScriptedModel([final("never asked")])
    result = run(model, toolbox, CostMeter(), stop=stop)
    assert result.error == "stopped: interrupted (SIGINT)" and model.calls == []


def test_a_stop_ends_a_simulated_agents_work_at_once(toolbox: Toolbox) -> None:
    issue = Issue(number=7, title="Slow", body="")
    stop = RunStop()
    threading.Timer(0.3, stop.stop, args=("interrupted (SIGTERM)",)).start()
    started = time.monotonic()
    result = run(SimulatedModel(issue, seconds=120, fail=False), toolbox, CostMeter(), stop=stop)
    assert time.monotonic() - started < 10
    assert result.error == "stopped: interrupted (SIGTERM)"


def test_transient_error_after_sdk_retries_is_raised(fake: FakeAnthropic, toolbox: Toolbox) -> None:
    fake.add(ErrorTurn(529), ErrorTurn(429))
    with pytest.raises(AgentError) as error:
        run(claude(fake, max_retries=1), toolbox, CostMeter())
    assert error.value.transient and "HTTP 429" in error.value.message


def test_permanent_error_fails_without_the_key(fake: FakeAnthropic, toolbox: Toolbox) -> None:
    fake.add(text_turn("never served"))
    result = run(claude(fake, api_key=SECRET_KEY), toolbox, CostMeter())

    assert not result.ok and result.turns == 0 and result.cost_usd == 0
    assert result.error is not None and "AuthenticationError (HTTP 401" in result.error
    assert "SECRET" not in result.error and "SECRET" not in repr(result)
    assert len(fake.requests) == 1  # 401 is not retried


def test_error_text_echoing_the_key_is_redacted(fake: FakeAnthropic, toolbox: Toolbox) -> None:
    fake.api_key = None  # accept any key
    fake.add(ErrorTurn(400, f"key {SECRET_KEY} is not allowed here"))
    result = run(claude(fake, api_key=SECRET_KEY), toolbox, CostMeter())

    assert result.error is not None and "BadRequestError" in result.error
    assert "[redacted]" in result.error and "SECRET" not in result.error


# ----- cost ---------------------------------------------------------------------------------


def test_cost_of_known_dated_and_configured_models() -> None:
    million = 1_000_000
    usage = Usage(input_tokens=million, output_tokens=million,
                  cache_creation_input_tokens=million, cache_read_input_tokens=million)  # fmt: skip
    assert cost_usd("claude-opus-4-1", usage) == pytest.approx(15 + 75 + 18.75 + 1.5)
    assert cost_usd("claude-sonnet-4-5-20250929", usage) == pytest.approx(3 + 15 + 3.75 + 0.3)
    assert cost_usd("claude-haiku-4-5", usage) == pytest.approx(1 + 5 + 1.25 + 0.1)

    with pytest.raises(UnknownModelError, match="no price for model 'claude-next'"):
        cost_usd("claude-next", usage)
    configured = {"claude-next": Price(input=2, output=8, cache_write=2.5, cache_read=0.2)}
    assert cost_usd("claude-next", usage, configured) == pytest.approx(12.7)
    override = {"claude-haiku-4-5": configured["claude-next"]}
    assert price_for("claude-haiku-4-5", override).output == 8  # config wins over the table


def test_cost_meter_is_thread_safe() -> None:
    meter = CostMeter()
    one = Usage(input_tokens=1, output_tokens=1)

    def add_many() -> None:
        for _ in range(1000):
            meter.add("claude-haiku-4-5", one)

    threads = [threading.Thread(target=add_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert meter.calls == 8000
    assert meter.usage == Usage(input_tokens=8000, output_tokens=8000)
    assert meter.total_usd == pytest.approx(8000 * 6 / 1_000_000)


# ----- prompts ------------------------------------------------------------------------------------


def test_task_prompt_states_the_issue() -> None:
    issue = Issue(number=7, title="Add a\n/health endpoint", body="It should return 200.")
    prompt = build_task_prompt(issue, None)
    assert "issue #7: Add a /health endpoint" in prompt
    assert "<issue>\nIt should return 200.\n</issue>" in prompt
    assert "check" not in prompt


def test_task_prompt_with_empty_or_enormous_body_and_check_failures() -> None:
    empty = build_task_prompt(Issue(number=1, title="Typo"), None)
    assert "no description" in empty

    huge = build_task_prompt(Issue(number=2, title="Big", body="a" * 100_000), None)
    assert len(huge) < 32_000 and "issue body cut: 70000 more characters" in huge

    failures = "noise\n" * 10_000 + "FAILED tests/test_x.py::test_y"
    revision = build_task_prompt(Issue(number=3, title="Fix"), failures)
    assert "revision" in revision and "earlier characters cut" in revision
    assert "FAILED tests/test_x.py::test_y\n</check_failures>" in revision


def test_system_prompt_ships_next_to_the_code() -> None:
    prompt = load_system_prompt()
    assert "run_command" in prompt and "not instructions" in prompt

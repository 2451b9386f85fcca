"""Credential blocks on a real Prefect server: registration, saving, loading by name through
`resolve_credentials`, environment fallback, clear errors, and secrets that never show."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from blocks import (
    FleetAgent,
    FleetGitHub,
    register_blocks,
    save_blocks_from_env,
)
from flows.config import ConfigError
from flows.fleet.config import FleetConfig, LabelNames
from flows.fleet.connection import FleetCredentials
from flows.fleet.cost import Price, price_for
from flows.fleet.credentials import load_block, resolve_credentials

TOKEN = "ghp_" + "s3cr3t" * 6
API_KEY = "sk-ant-" + "k3y" * 10
ENV = {"GITHUB_TOKEN": TOKEN, "ANTHROPIC_API_KEY": API_KEY}
PRICE = Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3)
OTHER_PRICE = Price(input=1.0, output=2.0, cache_write=1.25, cache_read=0.1)


@pytest.fixture
def api(prefect_server: str) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        register_blocks()
        yield prefect_server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_hidden(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and API_KEY not in text


# --- plain (no server) -------------------------------------------------------------------


def test_block_defaults_match_the_fleet_defaults() -> None:
    settings = FleetConfig()
    agent = FleetAgent(api_key=SecretStr(API_KEY))
    assert (agent.model, agent.max_tokens, agent.max_turns, agent.budget_usd_per_issue) == (
        settings.model,
        settings.max_tokens,
        settings.max_turns,
        settings.budget_usd_per_issue,
    )
    github = FleetGitHub(repository="acme/widgets", token=SecretStr(TOKEN))
    assert github.labels == settings.labels
    assert github.api_url == "https://api.github.com"


def test_secrets_hidden_in_repr_str_and_json() -> None:
    github = FleetGitHub(repository="acme/widgets", token=SecretStr(TOKEN))
    agent = FleetAgent(api_key=SecretStr(API_KEY))
    credentials = resolve_credentials(FleetConfig(mode="local", repo="acme/widgets"), ENV)
    assert_hidden(
        repr(github), str(github), github.model_dump_json(),
        repr(agent), str(agent), agent.model_dump_json(),
        repr(credentials), str(credentials),
    )  # fmt: skip
    assert github.token.get_secret_value() == TOKEN
    assert credentials.anthropic_api_key.get_secret_value() == API_KEY


def test_environment_fallback() -> None:
    settings = FleetConfig(mode="local", repo="acme/widgets", labels=LabelNames(ready="go"),
                           model="my-model", prices={"my-model": PRICE}, max_turns=7)  # fmt: skip
    env = {**ENV, "GITHUB_API_URL": "http://127.0.0.1:1/api/v3",
           "ANTHROPIC_BASE_URL": "http://127.0.0.1:2"}  # fmt: skip
    credentials = resolve_credentials(settings, env)
    assert credentials == FleetCredentials(
        repo="acme/widgets",
        github_token=credentials.github_token,
        github_api_url="http://127.0.0.1:1/api/v3",
        labels=LabelNames(ready="go"),
        anthropic_api_key=credentials.anthropic_api_key,
        anthropic_base_url="http://127.0.0.1:2",
        model="my-model",
        max_tokens=8192,
        max_turns=7,
        budget_usd_per_issue=5.0,
        prices={"my-model": PRICE},
        github_source="environment",
        agent_source="environment",
    )
    assert credentials.github_token.get_secret_value() == TOKEN
    defaults = resolve_credentials(settings, ENV)
    assert (defaults.github_api_url, defaults.anthropic_base_url) == (
        "https://api.github.com",
        None,
    )


@pytest.mark.parametrize(
    ("settings", "env", "message"),
    [
        (FleetConfig(mode="local"), ENV, "fleet settings: repo: required in local mode"),
        (FleetConfig(mode="local", repo="a/b"), {"ANTHROPIC_API_KEY": API_KEY},
         "environment: GITHUB_TOKEN: not set"),
        (FleetConfig(mode="local", repo="a/b"), {"GITHUB_TOKEN": TOKEN, "ANTHROPIC_API_KEY": ""},
         "environment: ANTHROPIC_API_KEY: not set"),
        (FleetConfig(mode="local", repo="a/b"), {**ENV, "GITHUB_API_URL": "api.github.com"},
         "environment: GITHUB_API_URL: String should match pattern"),
    ],
)  # fmt: skip
def test_environment_errors_name_the_variable(
    settings: FleetConfig, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_credentials(settings, env)
    assert str(error.value).startswith(message)
    assert_hidden(str(error.value))


def test_agent_block_rejects_an_unpriced_model() -> None:
    with pytest.raises(ValueError, match=r"no price for model 'claude-nonesuch'.* under `prices`"):
        FleetAgent(api_key=SecretStr(API_KEY), model="claude-nonesuch")
    with pytest.raises(ValueError, match="no price for model 'my-model'"):  # priced another
        FleetAgent(api_key=SecretStr(API_KEY), model="my-model", prices={"other": PRICE})


def test_agent_block_with_prices_takes_a_new_model() -> None:
    agent = FleetAgent(api_key=SecretStr(API_KEY), model="my-model", prices={"my-model": PRICE})
    assert price_for(agent.model, agent.prices) == PRICE
    as_typed = {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}  # the UI's
    loaded = FleetAgent.model_validate(
        {"api_key": API_KEY, "model": "my-model", "prices": {"my-model": as_typed}}
    )
    assert loaded.prices == {"my-model": PRICE}
    negative = {"my-model": {**as_typed, "input": -1}}
    with pytest.raises(ValueError, match=r"prices\.my-model\.input\n.*greater than 0"):
        FleetAgent.model_validate({"api_key": API_KEY, "model": "my-model", "prices": negative})


# --- on the Prefect server ---------------------------------------------------------------


def test_register_save_and_load_by_name(api: str) -> None:
    assert register_blocks() == ["fleet-github", "fleet-agent"]  # idempotent
    github_name, agent_name = unique("gh"), unique("agent")
    FleetGitHub(repository="acme/widgets", token=SecretStr(TOKEN), api_url="http://127.0.0.1:1",
                labels=LabelNames(ready="todo", priority_prefix="p")).save(github_name)  # fmt: skip
    FleetAgent(api_key=SecretStr(API_KEY), model="claude-opus-4-5", max_turns=9).save(agent_name)
    settings = FleetConfig(mode="distributed", github_block=github_name, agent_block=agent_name,
                           model="claude-haiku-4-5")  # fmt: skip

    credentials = resolve_credentials(settings, {})  # nothing from the environment

    assert credentials.github_token.get_secret_value() == TOKEN
    assert credentials.anthropic_api_key.get_secret_value() == API_KEY
    assert (credentials.repo, credentials.github_api_url) == ("acme/widgets", "http://127.0.0.1:1")
    assert (credentials.github_source, credentials.agent_source) == (
        f"block fleet-github/{github_name}",
        f"block fleet-agent/{agent_name}",
    )
    applied = credentials.apply(settings)
    assert (applied.repo, applied.model, applied.max_turns) == (
        "acme/widgets",
        "claude-opus-4-5",
        9,
    )
    assert (applied.labels.ready, applied.labels.priority_prefix) == ("todo", "p")
    loaded = load_block(FleetGitHub, github_name, "github_block")
    assert_hidden(repr(credentials), repr(loaded), loaded.model_dump_json(), repr(applied))


def test_agent_block_prices_override_the_configs(api: str) -> None:
    """A block that sets a new model prices it; the config's prices of other models stay."""
    name = unique("priced")
    FleetAgent(api_key=SecretStr(API_KEY), model="my-model", prices={"my-model": PRICE}).save(name)
    settings = FleetConfig(mode="local", repo="acme/widgets", agent_block=name,
                           prices={"my-model": OTHER_PRICE, "other": OTHER_PRICE})  # fmt: skip
    credentials = resolve_credentials(settings, {"GITHUB_TOKEN": TOKEN})
    applied = credentials.apply(settings)
    assert applied.model == "my-model"
    assert applied.prices == {"my-model": PRICE, "other": OTHER_PRICE}
    assert price_for(applied.model, applied.prices) == PRICE


def test_the_api_never_returns_a_secret_to_a_ui_client(api: str) -> None:
    name = unique("ui")
    document_id = FleetGitHub(repository="acme/widgets", token=SecretStr(TOKEN)).save(name)
    FleetAgent(api_key=SecretStr(API_KEY)).save(name)
    responses = [
        httpx.get(f"{api}/block_documents/{document_id}"),
        httpx.get(f"{api}/block_types/slug/fleet-github/block_documents/name/{name}"),
        httpx.post(f"{api}/block_documents/filter", json={}),
        httpx.get(f"{api}/block_types/slug/fleet-agent/block_documents"),
    ]
    for response in responses:
        response.raise_for_status()
        assert_hidden(response.text)
    assert responses[0].json()["data"]["token"] == "********"
    schema = responses[0].json()["block_schema"]["fields"]
    assert schema["secret_fields"] == ["token"]


def test_save_blocks_from_env(api: str) -> None:
    name = unique("env")
    settings = FleetConfig(mode="local", repo="acme/widgets", agent_block=name,
                           labels=LabelNames(review="check"), model="my-model",
                           prices={"my-model": PRICE})  # fmt: skip
    saved = save_blocks_from_env(settings, ENV, github_name=name)
    assert saved == [f"fleet-github/{name}", f"fleet-agent/{name}"]
    assert load_block(FleetGitHub, name, "github_block").labels.review == "check"
    agent = load_block(FleetAgent, name, "agent_block")
    assert agent.api_key.get_secret_value() == API_KEY
    assert (agent.model, agent.prices) == ("my-model", {"my-model": PRICE})

    with pytest.raises(ConfigError, match="already exists; add --overwrite to replace it"):
        save_blocks_from_env(settings, ENV, github_name=name)
    newer = {**ENV, "GITHUB_TOKEN": "ghp_newer"}
    save_blocks_from_env(settings, newer, github_name=name, overwrite=True)
    assert load_block(FleetGitHub, name, "github_block").token.get_secret_value() == "ghp_newer"

    with pytest.raises(ConfigError, match="name a block to save"):
        save_blocks_from_env(FleetConfig(), ENV)


def test_missing_block_names_the_block_and_how_to_create_it(api: str) -> None:
    settings = FleetConfig(mode="local", github_block="no-such-block")
    with pytest.raises(ConfigError) as error:
        resolve_credentials(settings, ENV)
    message = str(error.value)
    assert message.startswith("fleet settings: github_block: no Fleet GitHub block named "
                              "'no-such-block' (type fleet-github)")  # fmt: skip
    assert api in message and "blocks register" in message and "blocks save" in message


def test_repo_that_contradicts_the_block_is_an_error(api: str) -> None:
    name = unique("conflict")
    FleetGitHub(repository="acme/widgets", token=SecretStr(TOKEN)).save(name)
    with pytest.raises(ConfigError, match="differs from 'acme/widgets'"):
        resolve_credentials(FleetConfig(mode="local", repo="acme/other", github_block=name), ENV)


def test_unreachable_server_is_a_clear_config_error() -> None:
    url = f"http://127.0.0.1:{closed_port()}/api"
    settings = FleetConfig(mode="local", repo="acme/widgets", agent_block="anything")
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with pytest.raises(ConfigError) as error:
            resolve_credentials(settings, ENV)
        assert str(error.value) == (
            f"Prefect settings: PREFECT_API_URL: the Prefect API URL {url} could not be reached "
            "(ConnectError); start the server (`prefect server start`) or point PREFECT_API_URL "
            "at a running one"
        )
        with pytest.raises(ConfigError, match="could not be reached"):
            register_blocks()


def test_a_block_without_a_server_to_hold_it_is_a_clear_error() -> None:
    """Not Prefect's temporary server, which would start only to say it has no such block."""
    settings = FleetConfig(mode="local", github_block="fleet-github")
    with temporary_settings(updates={PREFECT_API_URL: ""}), pytest.raises(ConfigError) as error:
        resolve_credentials(settings, ENV)
    assert str(error.value) == (
        "fleet settings: github_block: block fleet-github/fleet-github lives on a Prefect "
        "server, but PREFECT_API_URL is not set: set it to the server that holds the block, "
        "or leave the block out of the settings to use environment variables"
    )


def test_a_block_made_in_the_ui_with_a_bad_value_names_block_and_field(api: str) -> None:
    name = unique("ui-made")
    block_type = httpx.get(f"{api}/block_types/slug/fleet-agent").json()
    schemas = httpx.post(
        f"{api}/block_schemas/filter",
        json={"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}},
    ).json()
    created = httpx.post(
        f"{api}/block_documents/",
        json={"name": name, "block_type_id": block_type["id"], "block_schema_id": schemas[0]["id"],
              "data": {"api_key": API_KEY, "model": "claude-nonesuch"}},
    )  # fmt: skip
    created.raise_for_status()
    settings = FleetConfig(mode="local", repo="acme/widgets", agent_block=name)
    with pytest.raises(ConfigError) as error:
        resolve_credentials(settings, ENV)
    assert str(error.value).startswith(
        f"block fleet-agent/{name} (fleet settings agent_block): model: "
        "no price for model 'claude-nonesuch'"
    )
    assert_hidden(str(error.value))

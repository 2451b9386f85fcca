"""Where the fleet's credentials come from in local and distributed modes: the Prefect blocks
named in the settings (`github_block`, `agent_block`), else environment variables
(GITHUB_TOKEN, GITHUB_API_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL).

A configured block is the source of truth for what it holds: the GitHub block's repository
and labels, the agent block's model and budgets replace the YAML's, and its prices are merged
over the YAML's, the block's winning for the same model (`apply`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from blocks.fleet import (
    FleetAgent,
    FleetGitHub,
    agent_block_from_env,
    github_block_from_env,
    prefect_api_errors,
)
from flows._prefect import api_configured, api_url_for_messages
from flows.config import ConfigError, format_loc
from flows.fleet.config import FleetConfig
from flows.fleet.connection import FleetCredentials

BlockT = TypeVar("BlockT", bound=Block)
ENVIRONMENT = "environment"


def resolve_credentials(settings: FleetConfig, env: Mapping[str, str]) -> FleetCredentials:
    """Load the configured blocks, or fall back to `env`; ConfigError on any problem."""
    github, github_source = _github(settings, env)
    agent, agent_source = _agent(settings, env)
    return FleetCredentials(
        repo=github.repository,
        github_token=github.token,
        github_api_url=github.api_url,
        labels=github.labels,
        anthropic_api_key=agent.api_key,
        anthropic_base_url=agent.base_url,
        model=agent.model,
        max_tokens=agent.max_tokens,
        max_turns=agent.max_turns,
        budget_usd_per_issue=agent.budget_usd_per_issue,
        prices=agent.prices,
        github_source=github_source,
        agent_source=agent_source,
    )


def _github(settings: FleetConfig, env: Mapping[str, str]) -> tuple[FleetGitHub, str]:
    if not settings.github_block:
        return github_block_from_env(settings, env), ENVIRONMENT
    block = load_block(FleetGitHub, settings.github_block, "github_block")
    if settings.repo and settings.repo != block.repository:
        raise ConfigError(
            "fleet settings",
            "repo",
            f"{settings.repo!r} differs from {block.repository!r} in the Fleet GitHub block "
            f"{settings.github_block!r}; drop one of them",
        )
    return block, _source(FleetGitHub, settings.github_block)


def _agent(settings: FleetConfig, env: Mapping[str, str]) -> tuple[FleetAgent, str]:
    if not settings.agent_block:
        return agent_block_from_env(settings, env), ENVIRONMENT
    block = load_block(FleetAgent, settings.agent_block, "agent_block")
    return block, _source(FleetAgent, settings.agent_block)


def load_block(block_type: type[BlockT], name: str, field: str) -> BlockT:
    """`block_type.load(name)` with ConfigErrors for a missing block, a block whose values
    no longer fit its type (e.g. made in the UI), an unreachable server, or none set: blocks
    live on the server PREFECT_API_URL names (Prefect's temporary one would have none)."""
    if not api_configured():
        raise ConfigError(
            "fleet settings", field, f"{_source(block_type, name)} lives on a Prefect server, "
            "but PREFECT_API_URL is not set: set it to the server that holds the block, or "
            "leave the block out of the settings to use environment variables",
        )  # fmt: skip
    with prefect_api_errors():
        try:
            loaded = block_type.load(name)
        except RuntimeError as exc:  # Prefect wraps a ValidationError of the stored values
            if not isinstance(exc.__cause__, ValidationError):
                raise
            error = exc.__cause__.errors(include_input=False, include_url=False)[0]
            problem = error["msg"].removeprefix("Value error, ")
            where = f"{_source(block_type, name)} (fleet settings {field})"
            raise ConfigError(where, format_loc(tuple(error["loc"])), problem) from None
        except ValueError as exc:
            if not isinstance(exc.__cause__, ObjectNotFound):
                raise
            raise ConfigError("fleet settings", field, _missing(block_type, name)) from None
    if not isinstance(loaded, block_type):  # Prefect returns a coroutine in async code
        raise TypeError("load_block is synchronous: call it outside an event loop")
    return loaded


def _missing(block_type: type[Block], name: str) -> str:
    type_name = block_type.get_block_type_name()
    return (
        f"no {type_name} block named {name!r} (type {block_type.get_block_type_slug()}) on the "
        f"Prefect server at {api_url_for_messages()}; create it in the Prefect UI (Blocks > + > "
        f"{type_name}, after `python -m flows.deploy blocks register`) or from environment "
        "variables with `python -m flows.deploy blocks save`"
    )


def _source(block_type: type[Block], name: str) -> str:
    return f"block {block_type.get_block_type_slug()}/{name}"

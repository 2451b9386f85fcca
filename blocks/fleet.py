"""Prefect Block types for the fleet's credentials: the GitHub connection and the agent.

Secrets are `SecretStr` fields: Prefect stores them encrypted, the API and UI show them as
`********`, and reprs, logs and `model_dump_json` show `**********`.

Register the types once per Prefect server (`python -m flows.deploy blocks register`, or
Prefect's own `prefect block register -m blocks`), then create documents in the UI
(Blocks > + > Fleet GitHub / Fleet Agent) or from environment variables with
`save_blocks_from_env`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator

from flows._prefect import api_url_for_messages
from flows.config import ConfigError, format_loc
from flows.fleet.config import BLOCK_NAME_PATTERN, FleetConfig, LabelNames, RepoName
from flows.fleet.cost import Price, priced_model

DEFAULT_GITHUB_API = "https://api.github.com"
HTTP_URL_PATTERN = r"^https?://\S+$"
BlockT = TypeVar("BlockT", bound=Block)


class FleetGitHub(Block):
    """The GitHub repository the fleet works on, the token it uses and its issue labels."""

    _block_type_name = "Fleet GitHub"
    _block_type_slug = "fleet-github"
    _description = (
        "The GitHub repository the agent fleet resolves issues of: OWNER/NAME, a token with "
        "repo access (secret), the API URL and the issue labels of the workflow."
    )
    _code_example = (
        '```python\nfrom blocks import FleetGitHub\n\ngithub = FleetGitHub.load("BLOCK_NAME")\n```'
    )

    repository: RepoName = Field(description="OWNER/NAME")
    token: SecretStr = Field(description="A GitHub token with repo access.")
    api_url: str = Field(
        default=DEFAULT_GITHUB_API,
        pattern=HTTP_URL_PATTERN,
        description="GitHub REST API; https://HOST/api/v3 for GitHub Enterprise.",
    )
    labels: LabelNames = Field(
        default_factory=LabelNames, description="Issue labels of the fleet's workflow."
    )


class FleetAgent(Block):
    """The Claude model the fleet's agents use, their budgets and the Anthropic API key;
    `prices` price a model without a built-in price, or override one (and the config's)."""

    _block_type_name = "Fleet Agent"
    _block_type_slug = "fleet-agent"
    _description = (
        "The Claude model of the agent fleet, its per-issue budgets and the Anthropic API key "
        "(secret); base_url points the client at a proxy or gateway; prices give the USD per "
        "million tokens of a model without a built-in price, or override one."
    )
    _code_example = (
        '```python\nfrom blocks import FleetAgent\n\nagent = FleetAgent.load("BLOCK_NAME")\n```'
    )

    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="USD per million tokens by model name ({input, output, cache_write, "
        "cache_read}): a model without a built-in price, or a price of your own for one "
        "(over the built-in table and the fleet config's).",
    )  # before model: its validator reads them
    model: str = Field(default="claude-sonnet-4-5", description="Anthropic model name.")
    max_tokens: int = Field(default=8192, gt=0, description="Output tokens per model call.")
    max_turns: int = Field(default=40, gt=0, description="Model calls per agent attempt.")
    budget_usd_per_issue: float = Field(
        default=5.0, gt=0, allow_inf_nan=False, description="An issue stops at this spend."
    )
    api_key: SecretStr = Field(description="Anthropic API key.")
    base_url: str | None = Field(
        default=None, pattern=HTTP_URL_PATTERN, description="Anthropic API base URL (optional)."
    )

    @field_validator("model")
    @classmethod
    def _priced_model(cls, model: str, info: ValidationInfo) -> str:
        return priced_model(model, info)  # built in, or in this block's `prices`


BLOCK_TYPES: tuple[type[Block], ...] = (FleetGitHub, FleetAgent)


def register_blocks() -> list[str]:
    """Register the block types on the configured Prefect server; returns their slugs.

    Idempotent. Raises ConfigError when the server cannot be reached."""
    with prefect_api_errors():
        for block_type in BLOCK_TYPES:
            block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def github_block_from_env(settings: FleetConfig, env: Mapping[str, str]) -> FleetGitHub:
    """A FleetGitHub built from the fleet settings (repo, labels) and GITHUB_TOKEN,
    GITHUB_API_URL; ConfigError naming the missing or bad setting."""
    if not settings.repo:
        when = (
            "to save a Fleet GitHub block"
            if settings.mode == "test"
            else f"in {settings.mode} mode"
        )
        raise ConfigError(
            "fleet settings",
            "repo",
            f"required {when} (--repo OWNER/NAME), unless github_block names a Fleet GitHub block",
        )
    token = env.get("GITHUB_TOKEN")
    if not token:
        raise ConfigError(
            "environment",
            "GITHUB_TOKEN",
            "not set (a token with repo access), and no github_block is configured",
        )
    values: dict[str, Any] = {
        "repository": settings.repo,
        "token": token,
        "labels": settings.labels,
        "api_url": env.get("GITHUB_API_URL") or DEFAULT_GITHUB_API,
    }
    return _from_values(FleetGitHub, values, {"token": "GITHUB_TOKEN", "api_url": "GITHUB_API_URL"})


def agent_block_from_env(settings: FleetConfig, env: Mapping[str, str]) -> FleetAgent:
    """A FleetAgent built from the fleet settings (model, budgets, prices) and ANTHROPIC_API_KEY,
    ANTHROPIC_BASE_URL; ConfigError naming the missing or bad setting."""
    api_key = env.get("ANTHROPIC_API_KEY")
    if not api_key:
        raise ConfigError(
            "environment", "ANTHROPIC_API_KEY", "not set, and no agent_block is configured"
        )
    values: dict[str, Any] = {
        "model": settings.model,
        "max_tokens": settings.max_tokens,
        "max_turns": settings.max_turns,
        "budget_usd_per_issue": settings.budget_usd_per_issue,
        "prices": settings.prices,
        "api_key": api_key,
        "base_url": env.get("ANTHROPIC_BASE_URL") or None,
    }
    return _from_values(
        FleetAgent, values, {"api_key": "ANTHROPIC_API_KEY", "base_url": "ANTHROPIC_BASE_URL"}
    )


def save_blocks_from_env(
    settings: FleetConfig,
    env: Mapping[str, str],
    github_name: str | None = None,
    agent_name: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Save block documents built from the environment (see `*_block_from_env`).

    Names default to the settings' github_block / agent_block; a block whose name is
    None on both sides is not saved. Registers the types first. Returns the saved blocks
    as `slug/name`. Raises ConfigError for missing input, a taken name or an unreachable
    server."""
    github_name = github_name or settings.github_block
    agent_name = agent_name or settings.agent_block
    if not github_name and not agent_name:
        raise ConfigError(
            "command line", "--github-block", "name a block to save (--github-block or "
            "--agent-block, or github_block or agent_block in the config)"
        )  # fmt: skip
    blocks: list[tuple[str, str, Block]] = []
    if github_name:
        blocks.append(("--github-block", github_name, github_block_from_env(settings, env)))
    if agent_name:
        blocks.append(("--agent-block", agent_name, agent_block_from_env(settings, env)))
    for field, name, _ in blocks:
        _check_block_name(field, name)
    register_blocks()
    saved: list[str] = []
    for field, name, block in blocks:
        with prefect_api_errors():
            try:
                block.save(name, overwrite=overwrite)
            except ValueError as exc:  # Prefect's only signal for a taken name
                if "already in use" not in str(exc):
                    raise
                problem = (
                    f"a {block.get_block_type_name()} block named {name!r} already exists; "
                    "add --overwrite to replace it"
                )
                raise ConfigError("command line", field, problem) from None
        saved.append(f"{block.get_block_type_slug()}/{name}")
    return saved


@contextmanager
def prefect_api_errors() -> Iterator[None]:
    """Turn a Prefect API that cannot be reached or fails into a ConfigError (no traceback)."""
    try:
        yield
    except httpx.HTTPStatusError as exc:
        problem = f"the Prefect API at {api_url_for_messages()} answered {exc.response.status_code}"
        raise ConfigError("Prefect settings", "PREFECT_API_URL", problem) from None
    except httpx.HTTPError as exc:
        problem = (
            f"the Prefect API URL {api_url_for_messages()} could not be reached "
            f"({exc.__class__.__name__}); start the server (`prefect server start`) "
            "or point PREFECT_API_URL at a running one"
        )
        raise ConfigError("Prefect settings", "PREFECT_API_URL", problem) from None


def _from_values(
    block_type: type[BlockT], values: dict[str, Any], env_names: Mapping[str, str]
) -> BlockT:
    """Validate a block; a bad value is reported against its env variable or fleet setting."""
    try:
        return block_type.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        problem = error["msg"].removeprefix("Value error, ")
        if field in env_names:
            raise ConfigError("environment", env_names[field], problem) from None
        setting = "repo" if field == "repository" else format_loc(tuple(error["loc"]))
        raise ConfigError("fleet settings", setting, problem) from None


def _check_block_name(field: str, name: str) -> None:
    if not re.match(BLOCK_NAME_PATTERN, name):
        problem = f"{name!r}: block names use lowercase letters, digits and dashes"
        raise ConfigError("command line", field, problem)

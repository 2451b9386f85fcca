"""Prefect Block types for credentials and settings (secrets as `SecretStr` fields)."""

from blocks.fleet import (
    BLOCK_TYPES,
    FleetAgent,
    FleetGitHub,
    agent_block_from_env,
    github_block_from_env,
    register_blocks,
    save_blocks_from_env,
)

__all__ = [
    "BLOCK_TYPES",
    "FleetAgent",
    "FleetGitHub",
    "agent_block_from_env",
    "github_block_from_env",
    "register_blocks",
    "save_blocks_from_env",
]

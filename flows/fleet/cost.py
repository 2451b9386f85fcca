"""What model calls cost: a price table per model and a thread-safe meter per worker or issue.

Prices are USD per million tokens at the standard (non-batch) rates of the Anthropic API.
Cache writes are priced at the 5-minute rate, the TTL the agent asks for. Models with a
long-context surcharge are priced at their base rate. Check these prices against
https://platform.claude.com/docs/en/about-claude/pricing when adding a model. A model without
a price here gets one from `prices:` in the fleet config or the Fleet Agent block.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field, ValidationInfo, with_config

from flows.fleet.models import Usage

PER_TOKEN = 1 / 1_000_000
_DATE_SUFFIX = re.compile(r"-\d{8}$")  # "claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5"
# A price as the config and blocks take it: a number (not text or a boolean), finite, >= 0;
# input and output > 0, or the per-issue budget could never stop an agent.
Usd = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
PositiveUsd = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]


# strict=False: a strict parent (FleetConfig) would take only a Price instance, not the
# mapping from YAML or a block; the numbers stay strict (Usd), unknown keys are refused.
@with_config(ConfigDict(extra="forbid", strict=False))
@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: PositiveUsd
    output: PositiveUsd
    cache_write: Usd  # 5-minute cache writes (1.25x input)
    cache_read: Usd  # cache hits and refreshes (0.1x input)


_OPUS_4 = Price(input=15.0, output=75.0, cache_write=18.75, cache_read=1.50)
_OPUS_4_5 = Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50)
_SONNET_4 = Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)
_SONNET_5 = Price(input=2.0, output=10.0, cache_write=2.50, cache_read=0.20)
_HAIKU_4_5 = Price(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10)

PRICES: dict[str, Price] = {
    "claude-opus-5": _OPUS_4_5,
    "claude-opus-4-8": _OPUS_4_5,
    "claude-opus-4-7": _OPUS_4_5,
    "claude-opus-4-6": _OPUS_4_5,
    "claude-opus-4-5": _OPUS_4_5,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4": _OPUS_4,
    "claude-opus-4-0": _OPUS_4,
    "claude-sonnet-5": _SONNET_5,
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    "claude-sonnet-4": _SONNET_4,
    "claude-sonnet-4-0": _SONNET_4,
    "claude-haiku-4-5": _HAIKU_4_5,
    "claude-3-5-haiku": Price(input=0.80, output=4.0, cache_write=1.0, cache_read=0.08),
}


class UnknownModelError(ValueError):
    """No price for a model: add it to PRICES or to `prices:` in the fleet config."""


def price_for(model: str, prices: Mapping[str, Price] | None = None) -> Price:
    """The price of `model`: `prices` (from config) first, then PRICES; a dated model id
    ("claude-sonnet-4-5-20250929") falls back to its alias."""
    table = {**PRICES, **(prices or {})}
    for name in (model, _DATE_SUFFIX.sub("", model)):
        if name in table:
            return table[name]
    raise UnknownModelError(
        f"no price for model {model!r}: give its USD per million tokens under `prices` in the "
        "fleet config (or in the Fleet Agent block that sets the model), e.g. "
        f"prices: {{{model!r}: {{input: 3.0, output: 15.0, cache_write: 3.75, cache_read: 0.3}}}}"
        f"; known models: {', '.join(sorted(table))}"
    )


def priced_model(model: str, info: ValidationInfo) -> str:
    """The body of a pydantic validator of a `model` field declared after a `prices` one:
    the model must have a price, built in or in those prices (UnknownModelError, a
    ValueError). When `prices` itself was invalid, that error is the one reported."""
    if "prices" in info.data:
        price_for(model, info.data["prices"])
    return model


def cost_usd(model: str, usage: Usage, prices: Mapping[str, Price] | None = None) -> float:
    """What one call (or a sum of calls) to `model` with this usage costs, in USD."""
    price = price_for(model, prices)
    return PER_TOKEN * (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    )


class CostMeter:
    """Adds up the calls of one worker or issue; safe to share between threads."""

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices = dict(prices or {})
        self._lock = threading.Lock()
        self._usage = Usage()
        self._total_usd = 0.0
        self._calls = 0

    def price(self, model: str) -> Price:
        """The price the meter uses for `model` (raises UnknownModelError without one)."""
        return price_for(model, self._prices)

    def add(self, model: str, usage: Usage) -> float:
        """Record one call; returns its cost in USD."""
        cost = cost_usd(model, usage, self._prices)
        with self._lock:
            self._usage = self._usage + usage
            self._total_usd += cost
            self._calls += 1
        return cost

    @property
    def usage(self) -> Usage:
        with self._lock:
            return self._usage

    @property
    def total_usd(self) -> float:
        with self._lock:
            return self._total_usd

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    def __repr__(self) -> str:
        return f"CostMeter(calls={self.calls}, total_usd={self.total_usd:.6f})"

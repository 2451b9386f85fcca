"""Exact money arithmetic: amounts are Decimals rounded half-up to whole cents."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


class CurrencyMismatchError(ValueError):
    """Two amounts in different currencies were combined."""


def _to_cents(value: Decimal | int | str) -> Decimal:
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, order=True)
class Money:
    """An amount of money in one currency (ISO 4217 code, e.g. "EUR")."""

    amount: Decimal
    currency: str = "EUR"

    def __post_init__(self) -> None:
        if len(self.currency) != 3 or not self.currency.isalpha() or not self.currency.isupper():
            raise ValueError(f"currency must be a 3-letter ISO code, got {self.currency!r}")
        # frozen dataclass: normalise the amount through object.__setattr__
        object.__setattr__(self, "amount", _to_cents(self.amount))

    @classmethod
    def of(cls, amount: Decimal | int | str, currency: str = "EUR") -> Money:
        """Money.of("9.99") - never pass floats, they are not exact."""
        return cls(Decimal(amount), currency)

    @classmethod
    def zero(cls, currency: str = "EUR") -> Money:
        return cls(Decimal(0), currency)

    @property
    def cents(self) -> int:
        return int(self.amount * 100)

    def _check(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatchError(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def times(self, factor: Decimal | int) -> Money:
        """Multiply by a quantity or a rate, rounding the result to cents."""
        return Money(self.amount * Decimal(factor), self.currency)

    def percent(self, rate: Decimal | int) -> Money:
        """`rate` percent of this amount, e.g. Money.of(200).percent(15) == Money.of(30)."""
        return self.times(Decimal(rate) / 100)

    def is_zero(self) -> bool:
        return self.amount == 0

    def __str__(self) -> str:
        return f"{self.amount:.2f} {self.currency}"


def total(amounts: list[Money], currency: str = "EUR") -> Money:
    """Sum a list of amounts; an empty list sums to zero in `currency`."""
    result = Money.zero(amounts[0].currency if amounts else currency)
    for amount in amounts:
        result = result + amount
    return result

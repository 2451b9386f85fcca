from decimal import Decimal

import pytest

from sampleshop import CurrencyMismatchError, Money
from sampleshop.money import total


def test_amounts_are_rounded_half_up_to_cents() -> None:
    assert Money.of("0.125").amount == Decimal("0.13")
    assert Money.of("2.004").cents == 200


def test_arithmetic_keeps_currency() -> None:
    assert Money.of("1.10") + Money.of("2.20") == Money.of("3.30")
    assert Money.of(5) - Money.of("0.01") == Money.of("4.99")
    assert -Money.of(3, "USD") == Money.of(-3, "USD")


def test_percent_and_times() -> None:
    assert Money.of(200).percent(15) == Money.of(30)
    assert Money.of("19.99").times(3) == Money.of("59.97")
    assert Money.of("0.05").percent(50) == Money.of("0.03")  # 0.025 rounds up


def test_mixing_currencies_is_an_error() -> None:
    with pytest.raises(CurrencyMismatchError):
        _ = Money.of(1, "EUR") + Money.of(1, "USD")


@pytest.mark.parametrize("code", ["eur", "EURO", "E1R"])
def test_invalid_currency_codes_are_rejected(code: str) -> None:
    with pytest.raises(ValueError):
        Money.of(1, code)


def test_total_of_nothing_is_zero_and_str_is_readable() -> None:
    assert total([], "GBP") == Money.zero("GBP")
    assert str(total([Money.of("1.5"), Money.of(2)])) == "3.50 EUR"

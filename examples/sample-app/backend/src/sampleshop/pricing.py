"""Order quotes: line subtotals, stackable discounts and tax."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from sampleshop.inventory import Inventory, Product
from sampleshop.money import Money, total


@dataclass(frozen=True)
class OrderLine:
    product: Product
    quantity: int

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise ValueError(f"{self.product.sku}: quantity must be positive")

    @property
    def subtotal(self) -> Money:
        return self.product.unit_price.times(self.quantity)


class Discount(Protocol):
    """Anything that can say how much to take off an order."""

    @property
    def label(self) -> str: ...

    def amount(self, lines: Sequence[OrderLine], subtotal: Money) -> Money: ...


@dataclass(frozen=True)
class PercentageOff:
    """`percent` off the whole order once its subtotal reaches `minimum`."""

    percent: Decimal
    minimum: Money
    label: str = "order discount"

    def amount(self, lines: Sequence[OrderLine], subtotal: Money) -> Money:
        if subtotal < self.minimum:
            return Money.zero(subtotal.currency)
        return subtotal.percent(self.percent)


@dataclass(frozen=True)
class BulkDiscount:
    """`percent` off one SKU's lines when at least `min_quantity` are ordered."""

    sku: str
    min_quantity: int
    percent: Decimal
    label: str = "bulk discount"

    def amount(self, lines: Sequence[OrderLine], subtotal: Money) -> Money:
        matching = [line for line in lines if line.product.sku == self.sku]
        if sum(line.quantity for line in matching) < self.min_quantity:
            return Money.zero(subtotal.currency)
        return total([line.subtotal for line in matching], subtotal.currency).percent(self.percent)


@dataclass(frozen=True)
class BuyXGetYFree:
    """For every `buy + free` items of one SKU, `free` of them cost nothing."""

    sku: str
    buy: int
    free: int
    label: str = "multi-buy"

    def amount(self, lines: Sequence[OrderLine], subtotal: Money) -> Money:
        matching = [line for line in lines if line.product.sku == self.sku]
        if not matching:
            return Money.zero(subtotal.currency)
        quantity = sum(line.quantity for line in matching)
        free_items = (quantity // (self.buy + self.free)) * self.free
        return matching[0].product.unit_price.times(free_items)


@dataclass(frozen=True)
class Quote:
    lines: tuple[OrderLine, ...]
    subtotal: Money
    discounts: tuple[tuple[str, Money], ...]
    tax: Money
    total: Money

    @property
    def discount_total(self) -> Money:
        return total([amount for _, amount in self.discounts], self.subtotal.currency)


def quote_order(
    lines: Sequence[OrderLine],
    discounts: Sequence[Discount] = (),
    tax_rate: Decimal = Decimal(0),
) -> Quote:
    """Price an order: discounts are computed on the undiscounted subtotal and capped so the
    total never goes below zero; tax (a percentage) applies to the discounted amount."""
    if not lines:
        raise ValueError("an order needs at least one line")
    currency = lines[0].product.unit_price.currency
    subtotal = total([line.subtotal for line in lines], currency)
    applied: list[tuple[str, Money]] = []
    remaining = subtotal
    for discount in discounts:
        amount = min(discount.amount(lines, subtotal), remaining)
        if not amount.is_zero():
            applied.append((discount.label, amount))
            remaining = remaining - amount
    tax = remaining.percent(tax_rate)
    return Quote(
        lines=tuple(lines),
        subtotal=subtotal,
        discounts=tuple(applied),
        tax=tax,
        total=remaining + tax,
    )


def place_order(
    inventory: Inventory,
    request: dict[str, int],
    discounts: Sequence[Discount] = (),
    tax_rate: Decimal = Decimal(0),
) -> Quote:
    """Quote an order for SKU -> quantity and reserve its stock; nothing is reserved if any
    SKU is unknown or short."""
    lines = [OrderLine(inventory.product(sku), quantity) for sku, quantity in request.items()]
    quote = quote_order(lines, discounts, tax_rate)
    inventory.reserve(request)
    return quote

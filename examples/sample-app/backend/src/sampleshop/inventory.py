"""Products and a stock ledger that can reserve items for orders, all or nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sampleshop.money import Money


class UnknownProductError(KeyError):
    """A SKU that the inventory has never seen."""


class OutOfStockError(ValueError):
    """Not enough free stock to reserve the requested quantity."""

    def __init__(self, sku: str, requested: int, available: int) -> None:
        super().__init__(f"{sku}: requested {requested}, only {available} available")
        self.sku = sku
        self.requested = requested
        self.available = available


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    unit_price: Money

    def __post_init__(self) -> None:
        if not self.sku or not self.sku.replace("-", "").isalnum():
            raise ValueError(f"invalid SKU {self.sku!r}")
        if self.unit_price.amount < 0:
            raise ValueError(f"{self.sku}: negative price {self.unit_price}")


@dataclass
class Inventory:
    """On-hand stock per SKU, minus what is reserved for orders not yet shipped."""

    _products: dict[str, Product] = field(default_factory=dict)
    _on_hand: dict[str, int] = field(default_factory=dict)
    _reserved: dict[str, int] = field(default_factory=dict)

    def add_product(self, product: Product, quantity: int = 0) -> None:
        self._products[product.sku] = product
        self._on_hand.setdefault(product.sku, 0)
        self._reserved.setdefault(product.sku, 0)
        if quantity:
            self.restock(product.sku, quantity)

    def product(self, sku: str) -> Product:
        try:
            return self._products[sku]
        except KeyError:
            raise UnknownProductError(sku) from None

    def restock(self, sku: str, quantity: int) -> None:
        self.product(sku)
        if quantity <= 0:
            raise ValueError(f"restock quantity must be positive, got {quantity}")
        self._on_hand[sku] += quantity

    def available(self, sku: str) -> int:
        self.product(sku)
        return self._on_hand[sku] - self._reserved[sku]

    def reserve(self, request: Mapping[str, int]) -> None:
        """Reserve every requested quantity, or nothing at all if one cannot be met."""
        for sku, quantity in request.items():
            if quantity <= 0:
                raise ValueError(f"{sku}: quantity must be positive, got {quantity}")
            free = self.available(sku)
            if quantity > free:
                raise OutOfStockError(sku, quantity, free)
        for sku, quantity in request.items():
            self._reserved[sku] += quantity

    def release(self, request: Mapping[str, int]) -> None:
        """Give back reserved items (an order was cancelled)."""
        for sku, quantity in request.items():
            if quantity > self._reserved.get(sku, 0):
                raise ValueError(f"{sku}: cannot release {quantity}, not reserved")
        for sku, quantity in request.items():
            self._reserved[sku] -= quantity

    def ship(self, request: Mapping[str, int]) -> None:
        """Reserved items leave the warehouse."""
        self.release(request)
        for sku, quantity in request.items():
            self._on_hand[sku] -= quantity

    def low_stock(self, threshold: int) -> list[str]:
        """SKUs whose free stock is at or below `threshold`, sorted."""
        return sorted(sku for sku in self._products if self.available(sku) <= threshold)

    def skus(self) -> Iterable[str]:
        return iter(sorted(self._products))

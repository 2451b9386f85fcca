"""sampleshop: a tiny inventory and order-pricing domain used by the pipeline example."""

from sampleshop.inventory import Inventory, OutOfStockError, Product, UnknownProductError
from sampleshop.money import CurrencyMismatchError, Money
from sampleshop.pricing import (
    BulkDiscount,
    BuyXGetYFree,
    Discount,
    OrderLine,
    PercentageOff,
    Quote,
    place_order,
    quote_order,
)

__all__ = [
    "BulkDiscount",
    "BuyXGetYFree",
    "CurrencyMismatchError",
    "Discount",
    "Inventory",
    "Money",
    "OrderLine",
    "OutOfStockError",
    "PercentageOff",
    "Product",
    "Quote",
    "UnknownProductError",
    "place_order",
    "quote_order",
]

__version__ = "0.1.0"

from decimal import Decimal

import pytest

from sampleshop import (
    BulkDiscount,
    BuyXGetYFree,
    Discount,
    Inventory,
    Money,
    OrderLine,
    OutOfStockError,
    PercentageOff,
    Product,
    place_order,
    quote_order,
)

MUG = Product("MUG-1", "Mug", Money.of("8.50"))
TEE = Product("TEE-2", "T-shirt", Money.of("20.00"))


def test_plain_quote_with_tax() -> None:
    quote = quote_order([OrderLine(MUG, 2), OrderLine(TEE, 1)], tax_rate=Decimal(20))
    assert quote.subtotal == Money.of("37.00")
    assert quote.discounts == ()
    assert quote.tax == Money.of("7.40")
    assert quote.total == Money.of("44.40")


def test_discounts_stack_and_are_labelled() -> None:
    discounts: list[Discount] = [
        BuyXGetYFree("MUG-1", buy=2, free=1),
        BulkDiscount("TEE-2", min_quantity=3, percent=Decimal(10)),
        PercentageOff(Decimal(5), minimum=Money.of(50)),
    ]
    quote = quote_order([OrderLine(MUG, 6), OrderLine(TEE, 3)], discounts)
    # 6 mugs = 51.00, 2 free = 17.00; 3 tees = 60.00, 10% = 6.00; 5% of 111.00 = 5.55
    assert quote.discounts == (
        ("multi-buy", Money.of("17.00")),
        ("bulk discount", Money.of("6.00")),
        ("order discount", Money.of("5.55")),
    )
    assert quote.discount_total == Money.of("28.55")
    assert quote.total == Money.of("82.45")


def test_discounts_below_threshold_do_not_apply() -> None:
    discounts: list[Discount] = [
        PercentageOff(Decimal(5), minimum=Money.of(100)),
        BulkDiscount("TEE-2", 3, Decimal(10)),
    ]
    quote = quote_order([OrderLine(TEE, 2)], discounts)
    assert quote.discounts == ()
    assert quote.total == Money.of(40)


def test_total_never_goes_negative() -> None:
    quote = quote_order([OrderLine(MUG, 1)], [PercentageOff(Decimal(150), Money.zero())])
    assert quote.total == Money.zero()


def test_empty_order_and_zero_quantity_are_rejected() -> None:
    with pytest.raises(ValueError):
        quote_order([])
    with pytest.raises(ValueError):
        OrderLine(MUG, 0)


def test_place_order_reserves_stock_only_when_possible() -> None:
    inventory = Inventory()
    inventory.add_product(MUG, quantity=5)
    inventory.add_product(TEE, quantity=1)
    quote = place_order(inventory, {"MUG-1": 2}, tax_rate=Decimal(10))
    assert quote.total == Money.of("18.70")
    assert inventory.available("MUG-1") == 3
    with pytest.raises(OutOfStockError):
        place_order(inventory, {"MUG-1": 1, "TEE-2": 2})
    assert inventory.available("MUG-1") == 3

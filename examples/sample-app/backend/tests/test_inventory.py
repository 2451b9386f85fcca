import pytest

from sampleshop import Inventory, Money, OutOfStockError, Product, UnknownProductError


@pytest.fixture
def inventory() -> Inventory:
    inv = Inventory()
    inv.add_product(Product("MUG-1", "Mug", Money.of("8.50")), quantity=10)
    inv.add_product(Product("TEE-2", "T-shirt", Money.of("19.99")), quantity=3)
    return inv


def test_reserve_reduces_available_stock(inventory: Inventory) -> None:
    inventory.reserve({"MUG-1": 4, "TEE-2": 1})
    assert inventory.available("MUG-1") == 6
    assert inventory.available("TEE-2") == 2


def test_reserve_is_all_or_nothing(inventory: Inventory) -> None:
    with pytest.raises(OutOfStockError) as caught:
        inventory.reserve({"MUG-1": 2, "TEE-2": 5})
    assert (caught.value.sku, caught.value.requested, caught.value.available) == ("TEE-2", 5, 3)
    assert inventory.available("MUG-1") == 10


def test_release_and_ship(inventory: Inventory) -> None:
    inventory.reserve({"MUG-1": 5})
    inventory.release({"MUG-1": 2})
    assert inventory.available("MUG-1") == 7
    inventory.ship({"MUG-1": 3})
    assert inventory.available("MUG-1") == 7
    with pytest.raises(ValueError, match="not reserved"):
        inventory.release({"MUG-1": 1})


def test_unknown_sku_and_bad_quantities(inventory: Inventory) -> None:
    with pytest.raises(UnknownProductError):
        inventory.available("NOPE")
    with pytest.raises(ValueError):
        inventory.restock("MUG-1", 0)
    with pytest.raises(ValueError):
        inventory.reserve({"MUG-1": -1})


def test_low_stock_report(inventory: Inventory) -> None:
    inventory.reserve({"MUG-1": 8})
    assert inventory.low_stock(threshold=3) == ["MUG-1", "TEE-2"]
    assert inventory.low_stock(threshold=1) == []
    assert list(inventory.skus()) == ["MUG-1", "TEE-2"]


def test_products_validate_sku_and_price() -> None:
    with pytest.raises(ValueError):
        Product("bad sku!", "x", Money.of(1))
    with pytest.raises(ValueError):
        Product("OK-1", "x", Money.of(-1))

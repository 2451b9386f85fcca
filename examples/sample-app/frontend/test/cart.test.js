import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  addItem,
  applyCoupon,
  emptyCart,
  MAX_QUANTITY,
  removeItem,
  setQuantity,
  totals,
} from "../src/cart.js";

const MUG = { sku: "MUG-1", name: "Mug", priceCents: 850 };
const TEE = { sku: "TEE-2", name: "T-shirt", priceCents: 2000 };

describe("cart", () => {
  it("adds items and merges lines of the same product", () => {
    let cart = addItem(emptyCart(), MUG);
    cart = addItem(cart, TEE, 2);
    cart = addItem(cart, MUG, 3);
    assert.deepEqual(
      cart.lines.map((line) => [line.product.sku, line.quantity]),
      [
        ["MUG-1", 4],
        ["TEE-2", 2],
      ],
    );
  });

  it("never mutates the previous cart", () => {
    const before = addItem(emptyCart(), MUG);
    const after = setQuantity(before, "MUG-1", 5);
    assert.equal(before.lines[0]?.quantity, 1);
    assert.equal(after.lines[0]?.quantity, 5);
  });

  it("clamps quantities and removes lines at zero", () => {
    const cart = setQuantity(addItem(emptyCart(), MUG), "MUG-1", 1000);
    assert.equal(cart.lines[0]?.quantity, MAX_QUANTITY);
    assert.equal(removeItem(cart, "MUG-1").lines.length, 0);
    assert.throws(() => setQuantity(cart, "MUG-1", 1.5), TypeError);
  });

  it("computes totals with a coupon", () => {
    const cart = addItem(addItem(emptyCart(), MUG, 2), TEE);
    const { cart: discounted, accepted } = applyCoupon(cart, " welcome10 ");
    assert.equal(accepted, true);
    assert.deepEqual(totals(discounted), {
      itemCount: 3,
      subtotal: 3700,
      discount: 370,
      total: 3330,
    });
  });

  it("rejects unknown coupons", () => {
    const result = applyCoupon(emptyCart(), "FREESTUFF");
    assert.equal(result.accepted, false);
    assert.equal(result.cart.couponCode, null);
  });
});

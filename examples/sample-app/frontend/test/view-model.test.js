import assert from "node:assert/strict";
import { it } from "node:test";

import { createCartStore, present } from "../src/view-model.js";
import { emptyCart } from "../src/cart.js";

const MUG = { sku: "MUG-1", name: "Mug", priceCents: 850 };

it("presents an empty cart", () => {
  const view = present(emptyCart());
  assert.equal(view.isEmpty, true);
  assert.equal(view.summary, "0 items");
  assert.equal(view.total, "€0.00");
  assert.equal(view.discount, null);
});

it("store notifies subscribers with ready-to-render rows", () => {
  const store = createCartStore("USD");
  /** @type {import("../src/view-model.js").CartView[]} */
  const seen = [];
  const unsubscribe = store.subscribe((view) => seen.push(view));

  store.add(MUG, 3);
  store.redeem("vip25");
  store.redeem("nope");
  unsubscribe();
  store.remove("MUG-1");

  assert.equal(seen.length, 3);
  assert.deepEqual(seen[0]?.rows, [
    { sku: "MUG-1", label: "3 × Mug", unitPrice: "$8.50", lineTotal: "$25.50" },
  ]);
  assert.equal(seen[0]?.message, "Added Mug");
  assert.equal(seen[1]?.discount, "−$6.38 (VIP25)");
  assert.equal(seen[1]?.total, "$19.12");
  assert.equal(seen[2]?.message, 'Unknown coupon "nope"');
  assert.equal(store.view().isEmpty, true);
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { formatPrice, parsePrice, percentOf } from "../src/money.js";

describe("formatPrice", () => {
  it("formats integer cents as currency", () => {
    assert.equal(formatPrice(1250), "€12.50");
    assert.equal(formatPrice(199999, "USD"), "$1,999.99");
    assert.equal(formatPrice(0, "GBP"), "£0.00");
  });

  it("rejects fractional cents", () => {
    assert.throws(() => formatPrice(1.5), TypeError);
  });
});

describe("parsePrice", () => {
  it("parses typed prices into cents", () => {
    assert.equal(parsePrice("12"), 1200);
    assert.equal(parsePrice(" 12.5 "), 1250);
    assert.equal(parsePrice("1,299.99"), 129999);
  });

  it("returns null for anything else", () => {
    for (const text of ["", "abc", "1.234", "-3", "1e3"]) {
      assert.equal(parsePrice(text), null, text);
    }
  });
});

it("percentOf rounds half up to whole cents", () => {
  assert.equal(percentOf(1000, 10), 100);
  assert.equal(percentOf(5, 50), 3);
});

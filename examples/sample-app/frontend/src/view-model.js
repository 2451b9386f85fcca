// A DOM-free view-model: it turns cart state into ready-to-render strings and lets a UI
// (or a test) subscribe to changes.
import { addItem, applyCoupon, emptyCart, removeItem, setQuantity, totals } from "./cart.js";
import { formatPrice } from "./money.js";

/** @typedef {import("./cart.js").Cart} Cart */
/** @typedef {import("./cart.js").Product} Product */

/**
 * @typedef {object} RowView
 * @property {string} sku
 * @property {string} label
 * @property {string} unitPrice
 * @property {string} lineTotal
 */

/**
 * @typedef {object} CartView
 * @property {boolean} isEmpty
 * @property {RowView[]} rows
 * @property {string} summary
 * @property {string} subtotal
 * @property {string | null} discount
 * @property {string} total
 * @property {string | null} message
 */

/**
 * @param {Cart} cart
 * @param {string | null} message
 * @param {string} currency
 * @returns {CartView}
 */
export function present(cart, message = null, currency = "EUR") {
  const sums = totals(cart);
  return {
    isEmpty: cart.lines.length === 0,
    rows: cart.lines.map((line) => ({
      sku: line.product.sku,
      label: `${line.quantity} × ${line.product.name}`,
      unitPrice: formatPrice(line.product.priceCents, currency),
      lineTotal: formatPrice(line.product.priceCents * line.quantity, currency),
    })),
    summary: sums.itemCount === 1 ? "1 item" : `${sums.itemCount} items`,
    subtotal: formatPrice(sums.subtotal, currency),
    discount:
      sums.discount > 0 ? `−${formatPrice(sums.discount, currency)} (${cart.couponCode})` : null,
    total: formatPrice(sums.total, currency),
    message,
  };
}

/**
 * @callback Listener
 * @param {CartView} view
 * @returns {void}
 */

/**
 * A tiny store: holds a cart, exposes user actions, notifies listeners with a fresh view.
 * @param {string} [currency]
 */
export function createCartStore(currency = "EUR") {
  /** @type {Cart} */
  let cart = emptyCart();
  /** @type {string | null} */
  let message = null;
  /** @type {Set<Listener>} */
  const listeners = new Set();

  const view = () => present(cart, message, currency);

  /**
   * @param {Cart} next
   * @param {string | null} [note]
   */
  const update = (next, note = null) => {
    cart = next;
    message = note;
    const snapshot = view();
    for (const listener of listeners) {
      listener(snapshot);
    }
  };

  return {
    view,
    /** @param {Listener} listener @returns {() => void} unsubscribe */
    subscribe(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    /** @param {Product} product @param {number} [quantity] */
    add(product, quantity = 1) {
      update(addItem(cart, product, quantity), `Added ${product.name}`);
    },
    /** @param {string} sku @param {number} quantity */
    setQuantity(sku, quantity) {
      update(setQuantity(cart, sku, quantity));
    },
    /** @param {string} sku */
    remove(sku) {
      update(removeItem(cart, sku));
    },
    /** @param {string} code */
    redeem(code) {
      const result = applyCoupon(cart, code);
      update(
        result.cart,
        result.accepted ? `Coupon ${result.cart.couponCode} applied` : `Unknown coupon "${code}"`,
      );
    },
  };
}

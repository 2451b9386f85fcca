// An immutable shopping cart: every operation returns a new cart.
import { percentOf } from "./money.js";

/**
 * @typedef {object} Product
 * @property {string} sku
 * @property {string} name
 * @property {number} priceCents
 */

/**
 * @typedef {object} CartLine
 * @property {Product} product
 * @property {number} quantity
 */

/**
 * @typedef {object} Cart
 * @property {readonly CartLine[]} lines
 * @property {string | null} couponCode
 */

/**
 * @typedef {object} Totals
 * @property {number} itemCount
 * @property {number} subtotal
 * @property {number} discount
 * @property {number} total
 */

/** Coupon code -> percent off the subtotal. */
export const COUPONS = Object.freeze(
  /** @type {Record<string, number>} */ ({ WELCOME10: 10, VIP25: 25 }),
);

export const MAX_QUANTITY = 99;

/** @returns {Cart} */
export function emptyCart() {
  return { lines: [], couponCode: null };
}

/**
 * @param {Cart} cart
 * @param {Product} product
 * @param {number} [quantity]
 * @returns {Cart}
 */
export function addItem(cart, product, quantity = 1) {
  const existing = cart.lines.find((line) => line.product.sku === product.sku);
  const current = existing === undefined ? 0 : existing.quantity;
  return setQuantity(
    existing === undefined ? { ...cart, lines: [...cart.lines, { product, quantity: 0 }] } : cart,
    product.sku,
    current + quantity,
  );
}

/**
 * Set a line's quantity, clamped to MAX_QUANTITY; 0 or less removes the line.
 * @param {Cart} cart
 * @param {string} sku
 * @param {number} quantity
 * @returns {Cart}
 */
export function setQuantity(cart, sku, quantity) {
  if (!Number.isInteger(quantity)) {
    throw new TypeError(`quantity must be an integer, got ${quantity}`);
  }
  const lines = cart.lines
    .map((line) =>
      line.product.sku === sku ? { ...line, quantity: Math.min(quantity, MAX_QUANTITY) } : line,
    )
    .filter((line) => line.quantity > 0);
  return { ...cart, lines };
}

/**
 * @param {Cart} cart
 * @param {string} sku
 * @returns {Cart}
 */
export function removeItem(cart, sku) {
  return setQuantity(cart, sku, 0);
}

/**
 * Apply a coupon code (case-insensitive); unknown codes are rejected.
 * @param {Cart} cart
 * @param {string} code
 * @returns {{ cart: Cart, accepted: boolean }}
 */
export function applyCoupon(cart, code) {
  const normalized = code.trim().toUpperCase();
  if (!(normalized in COUPONS)) {
    return { cart, accepted: false };
  }
  return { cart: { ...cart, couponCode: normalized }, accepted: true };
}

/**
 * @param {Cart} cart
 * @returns {Totals}
 */
export function totals(cart) {
  let itemCount = 0;
  let subtotal = 0;
  for (const line of cart.lines) {
    itemCount += line.quantity;
    subtotal += line.product.priceCents * line.quantity;
  }
  const percent = cart.couponCode === null ? 0 : (COUPONS[cart.couponCode] ?? 0);
  const discount = percentOf(subtotal, percent);
  return { itemCount, subtotal, discount, total: subtotal - discount };
}

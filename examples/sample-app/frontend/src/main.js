// Bundle entry point: the public API of the sample frontend.
export {
  addItem,
  applyCoupon,
  COUPONS,
  emptyCart,
  removeItem,
  setQuantity,
  totals,
} from "./cart.js";
export { formatPrice, parsePrice, percentOf } from "./money.js";
export { createCartStore, present } from "./view-model.js";

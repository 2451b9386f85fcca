// Prices are integer cents everywhere; only this module turns them into text.

/** @type {Map<string, Intl.NumberFormat>} */
const formatters = new Map();

/**
 * Format integer cents as a localised currency string.
 * @param {number} cents
 * @param {string} [currency]
 * @param {string} [locale]
 * @returns {string}
 */
export function formatPrice(cents, currency = "EUR", locale = "en-US") {
  if (!Number.isInteger(cents)) {
    throw new TypeError(`price must be whole cents, got ${cents}`);
  }
  const key = `${locale}|${currency}`;
  let formatter = formatters.get(key);
  if (formatter === undefined) {
    formatter = new Intl.NumberFormat(locale, { style: "currency", currency });
    formatters.set(key, formatter);
  }
  return formatter.format(cents / 100);
}

/**
 * Parse a user-typed price ("12", "12.5", "1,299.99") into integer cents.
 * @param {string} text
 * @returns {number | null} null when the text is not a price
 */
export function parsePrice(text) {
  const cleaned = text.trim().replaceAll(",", "");
  const match = /^(\d+)(?:\.(\d{1,2}))?$/.exec(cleaned);
  if (match === null) {
    return null;
  }
  const whole = Number(match[1]);
  const fraction = Number((match[2] ?? "0").padEnd(2, "0"));
  return whole * 100 + fraction;
}

/**
 * `percent` percent of `cents`, rounded half up to a whole cent.
 * @param {number} cents
 * @param {number} percent
 * @returns {number}
 */
export function percentOf(cents, percent) {
  return Math.round((cents * percent) / 100);
}

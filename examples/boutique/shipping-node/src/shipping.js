/**
 * The shipping rules, as examples/boutique/boutique/shipping.py has them: quotes in US dollars,
 * tracking ids derived from the order, and the checks of both RPC methods.
 */
import { createHash } from 'node:crypto';

import { invalidArgument } from './errors.js';
import { NOT_BLANK } from './schema.js';

const NANOS_PER_UNIT = 1_000_000_000n;
const BASE_FEE = 4_990_000_000n; // $4.99 in nanos
const PER_EXTRA_ITEM = 750_000_000n; // $0.75
export const FREE_FROM_ITEMS = 20;

/** @typedef {{street_address: string, city: string, state: string, country: string, zip_code: string}} Address */
/** @typedef {{product_id: string, quantity: number}} CartItem */
/** @typedef {{currency_code: string, units: number, nanos: number}} Money */

/** @param {Address} address @returns {Address} */
export function checkAddress(address) {
  const missing = /** @type {const} */ (['street_address', 'city', 'country', 'zip_code']).filter(
    (name) => !NOT_BLANK.test(address[name]),
  );
  if (missing.length > 0) throw invalidArgument(`address is missing: ${missing.join(', ')}`);
  return address;
}

/** Split a nano count into units and nanos of its sign. @param {bigint} total @returns {Money} */
function usd(total) {
  const sign = total < 0n ? -1n : 1n;
  const magnitude = total < 0n ? -total : total;
  return {
    currency_code: 'USD',
    units: Number(sign * (magnitude / NANOS_PER_UNIT)),
    nanos: Number(sign * (magnitude % NANOS_PER_UNIT)),
  };
}

/** $4.99 for the first item, $0.75 for each further one, free from 20 items. @param {CartItem[]} items */
export function quote(items) {
  const count = items.reduce((sum, item) => sum + item.quantity, 0);
  if (count === 0 || count >= FREE_FROM_ITEMS) return usd(0n);
  return usd(BASE_FEE + PER_EXTRA_ITEM * BigInt(count - 1));
}

/** Python's string order: by code point (JavaScript's `<` compares UTF-16 units). @param {string} a @param {string} b */
function byCodePoint(a, b) {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    const d = /** @type {number} */ (x[i].codePointAt(0)) - /** @type {number} */ (y[i].codePointAt(0));
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/**
 * Same order, same tracking id: shipping an order twice yields one parcel number.
 * @param {Address} address @param {CartItem[]} items @param {string} [orderId]
 */
export function trackingId(address, items, orderId = '') {
  const lines = [...items]
    .sort((a, b) => byCodePoint(a.product_id, b.product_id))
    .map((i) => `${i.product_id}x${i.quantity}`)
    .join(';');
  const text = `${orderId}|${address.street_address}|${address.zip_code}|${address.country}|${lines}`;
  const digits = createHash('sha256').update(text, 'utf8').digest('hex').toUpperCase();
  return `${digits.slice(0, 2)}-${digits.slice(2, 7)}-${digits.slice(7, 16)}`;
}

/** RPC get_quote. @param {{address: Address, items: CartItem[]}} args */
export function getQuote({ address, items }) {
  checkAddress(address);
  return quote(items);
}

/** RPC ship_order. @param {{address: Address, items: CartItem[], order_id?: string}} args */
export function shipOrder({ address, items, order_id: orderId = '' }) {
  checkAddress(address);
  if (items.length === 0) throw invalidArgument('nothing to ship');
  return trackingId(address, items, orderId);
}

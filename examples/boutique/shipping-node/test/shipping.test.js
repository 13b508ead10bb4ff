import assert from 'node:assert/strict';
import { test } from 'node:test';

import { checkAddress, getQuote, quote, shipOrder, trackingId } from '../src/shipping.js';

const PARIS = { street_address: '1 Rue de la Paix', city: 'Paris', state: '', country: 'France', zip_code: '75002' };
const usd = (units, nanos) => ({ currency_code: 'USD', units, nanos });
const items = (...quantities) => quantities.map((quantity, i) => ({ product_id: `p${i}`, quantity }));

test('a quote is $4.99 for the first item and $0.75 for each further one', () => {
  assert.deepEqual(quote(items(1)), usd(4, 990_000_000));
  assert.deepEqual(quote(items(2)), usd(5, 740_000_000));
  assert.deepEqual(quote(items(3, 2)), usd(7, 990_000_000));
  assert.deepEqual(quote(items(19)), usd(18, 490_000_000));
});

test('no items, or 20 and more, ship free', () => {
  assert.deepEqual(quote([]), usd(0, 0));
  assert.deepEqual(quote(items(20)), usd(0, 0));
  assert.deepEqual(quote(items(10, 10, 1)), usd(0, 0));
});

test('tracking ids are the ones shipping.py computes', () => {
  // Vectors from boutique.shipping.tracking_id.
  const mixed = [
    { product_id: 'b', quantity: 2 },
    { product_id: 'a', quantity: 1 },
    { product_id: 'é', quantity: 1 },
    { product_id: '\u{1F600}', quantity: 1 }, // sorted by code point: after U+FFFF, as Python does
    { product_id: '\uffff', quantity: 3 },
  ];
  assert.equal(trackingId(PARIS, mixed, 'abcdef0123456789'), '02-C7D1F-43A8102CE');
  assert.equal(trackingId(PARIS, [{ product_id: 'x', quantity: 1 }]), 'C2-32AD3-04539627D');
});

test('the same order gives the same tracking id whatever the order of its lines', () => {
  const lines = items(1, 2, 3);
  assert.equal(shipOrder({ address: PARIS, items: lines, order_id: 'o' }), shipOrder({ address: PARIS, items: [...lines].reverse(), order_id: 'o' }));
});

test('a blank address line is refused with the fields it misses', () => {
  const blank = { ...PARIS, city: ' \u00a0', zip_code: '' };
  assert.throws(() => checkAddress(blank), { kind: 'invalid_argument', status: 422, message: 'address is missing: city, zip_code' });
  assert.throws(() => getQuote({ address: blank, items: [] }), { status: 422 });
  assert.deepEqual(checkAddress({ ...PARIS, state: '' }), { ...PARIS, state: '' });
});

test('an empty order is nothing to ship', () => {
  assert.throws(() => shipOrder({ address: PARIS, items: [] }), { kind: 'invalid_argument', message: 'nothing to ship' });
});

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decode } from '../src/rpc.js';
import { decodeOrderPlaced, refusal } from '../src/events.js';

const ADDRESS = '{"street_address":"a","city":"b","state":"","country":"c","zip_code":"d"}';
const body = (items, extra = '') => Buffer.from(`{"address":${ADDRESS},"items":${items}${extra}}`);

/** msgspec's messages and paths, as archipel's server answers them (422, details.path). */
const REFUSALS = [
  ['{}', 'Object missing required field `address`', '$'],
  ['[]', 'Expected `object`, got `array`', '$'],
  ['{"address":1,"items":[]}', 'Expected `object`, got `int` - at `$.address`', '$.address'],
  ['{"address":{"street_address":"a"},"items":[]}', 'Object missing required field `city` - at `$.address`', '$.address'],
  [body('[]'), 'Expected `array` of length >= 1 - at `$.items`', '$.items'],
  [body('[{"product_id":"","quantity":1}]'), 'Expected `str` of length >= 1 - at `$.items[0].product_id`', '$.items[0].product_id'],
  [body('[{"product_id":"x","quantity":0}]'), 'Expected `int` >= 1 - at `$.items[0].quantity`', '$.items[0].quantity'],
  [body('[{"product_id":"x","quantity":101}]'), 'Expected `int` <= 100 - at `$.items[0].quantity`', '$.items[0].quantity'],
  [body('[{"product_id":"x","quantity":1.5}]'), 'Expected `int`, got `float` - at `$.items[0].quantity`', '$.items[0].quantity'],
  [body('[{"product_id":"x","quantity":true}]'), 'Expected `int`, got `bool` - at `$.items[0].quantity`', '$.items[0].quantity'],
  [body('[{"product_id":"x"}]'), 'Object missing required field `quantity` - at `$.items[0]`', '$.items[0]'],
  [body('[{"product_id":"a\\u0000","quantity":1}]'), "Expected `str` matching regex '^[^\\\\u0000]*$' - at `$.items[0].product_id`", '$.items[0].product_id'],
  [body(`[{"product_id":"${'x'.repeat(65)}","quantity":1}]`), 'Expected `str` of length <= 64 - at `$.items[0].product_id`', '$.items[0].product_id'],
  [body('[{"product_id":"x","quantity":1}]', ',"order_id":null'), 'Expected `str`, got `null` - at `$.order_id`', '$.order_id'],
];

test('arguments are refused as msgspec refuses them', () => {
  for (const [raw, message, path] of REFUSALS) {
    const input = Buffer.isBuffer(raw) ? raw : Buffer.from(raw);
    assert.throws(() => decode('ship_order', input), { status: 422, kind: 'invalid_argument', message, details: { path } }, input.toString());
  }
});

test('whole floats are integers, unknown fields are ignored, order_id defaults to ""', () => {
  const args = decode('ship_order', body('[{"product_id":"x","quantity":2.0}]', ',"extra":[1]'));
  assert.deepEqual(args.items, [{ product_id: 'x', quantity: 2 }]);
  assert.equal(args.order_id, '');
  assert.deepEqual(decode('get_quote', body('[]')).items, []); // get_quote takes an empty cart
});

test('a body that is not JSON is a bad request', () => {
  assert.throws(() => decode('get_quote', Buffer.from('{bad')), { status: 400, kind: 'bad_request' });
});

const GOOD = {
  topic: 'orders/placed',
  type: 'OrderPlaced',
  source: '/boutique/checkout',
  id: 'e1',
  time: '2026-01-02T03:04:05.123456+00:00',
  traceparent: undefined,
  payload: Buffer.from('{}'),
};

test('events from anyone but checkout, of another type, or badly timed are refused', () => {
  assert.equal(refusal(GOOD), null);
  assert.equal(refusal({ ...GOOD, type: 'boutique.OrderPlaced', time: '2026-01-02T03:04:05Z' }), null);
  assert.match(refusal({ ...GOOD, source: '/boutique/email' }), /may not publish on topic 'orders\/placed'/);
  assert.match(refusal({ ...GOOD, source: '' }), /may not publish/);
  assert.match(refusal({ ...GOOD, type: 'OrderShipped' }), /is not OrderPlaced/);
  assert.match(refusal({ ...GOOD, time: '2026-01-02T03:04:05' }), /not an RFC 3339 timestamp/);
  assert.match(refusal({ ...GOOD, time: '2026-02-30T03:04:05Z' }), /not an RFC 3339 timestamp/);
  assert.match(refusal({ ...GOOD, id: 'a\nb' }), /attribute id: .* holds control characters/);
  assert.equal(refusal({ ...GOOD, id: '' }), 'the event has no id');
});

test('an OrderPlaced payload is validated as msgspec validates it', () => {
  assert.throws(() => decodeOrderPlaced(Buffer.from('nope')), /^Error: invalid payload: JSON is malformed/);
  assert.throws(() => decodeOrderPlaced(Buffer.from('{"order_id":1}')), { message: 'invalid payload: Expected `str`, got `int` - at `$.order_id`' });
  const money = '{"currency_code":"usd","units":1}';
  const placed = `{"order_id":"o","user_id":"u","email":"e","items":[],"shipping_cost":${money},"total":${money},"address":${ADDRESS},"transaction_id":"t"}`;
  assert.throws(() => decodeOrderPlaced(Buffer.from(placed)), {
    message: "invalid payload: Expected `str` matching regex '^(AUD|CAD|CHF|EUR|GBP|JPY|SEK|USD)$' - at `$.shipping_cost.currency_code`",
  });
  const ok = decodeOrderPlaced(Buffer.from(placed.replaceAll('usd', 'USD\\n'))); // Python's `$` takes a final newline
  assert.equal(ok.total.nanos, 0);
});

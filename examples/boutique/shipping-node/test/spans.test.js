import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Tracer, parseTraceparent } from '../src/spans.js';

const PARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

test('a span continues its parent trace; a missing or malformed parent starts a new one', () => {
  const tracer = new Tracer({ process: 'shipping' });
  const child = tracer.start('shipping.get_quote', 'server', PARENT, {});
  assert.ok(child !== null);
  assert.equal(child.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
  assert.equal(child.parentId, '00f067aa0ba902b7');
  assert.match(child.traceparent, /^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/);
  assert.notEqual(child.spanId, '00f067aa0ba902b7');
  for (const parent of [undefined, 'garbage', `${PARENT}x`, '00-00000000000000000000000000000000-00f067aa0ba902b7-01']) {
    const root = tracer.start('x', 'consumer', parent, {});
    assert.ok(root !== null && root.parentId === null && /^[0-9a-f]{32}$/.test(root.traceId), String(parent));
    assert.notEqual(root.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
  }
  assert.equal(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01'), null);
});

test('no span when the parent is not sampled, or with tracing off', () => {
  assert.equal(new Tracer({ process: 's' }).start('x', 'server', PARENT.replace(/01$/, '00'), {}), null);
  const off = new Tracer({ process: 's', enabled: false });
  assert.equal(off.start('x', 'server', PARENT, {}), null);
  assert.deepEqual(JSON.parse(off.traces(new URLSearchParams())[1]), { process: 's', spans: [] });
});

test('the ring keeps the newest spans; limit answers the newest; a failure is an error span', () => {
  const tracer = new Tracer({ process: 'shipping', size: 3 });
  for (const name of ['a', 'b', 'c', 'd']) tracer.start(name, 'internal', undefined, {})?.end();
  tracer.start('e', 'internal', undefined, {})?.fail('invalid_argument', 'bad address');
  const names = (/** @type {string} */ query) =>
    JSON.parse(tracer.traces(new URLSearchParams(query))[1]).spans.map((/** @type {any} */ s) => s.name);
  assert.deepEqual(names(''), ['c', 'd', 'e']);
  assert.deepEqual(names('limit=2'), ['d', 'e']);
  const [failed] = JSON.parse(tracer.traces(new URLSearchParams('limit=1'))[1]).spans;
  assert.equal(failed.status, 'error');
  assert.equal(failed.attributes['error.type'], 'invalid_argument');
});

test('start_ns and end_ns are exact integers of nanoseconds, not rounded floats', () => {
  const tracer = new Tracer({ process: 'shipping' });
  const span = tracer.start('x', 'internal', undefined, {});
  assert.ok(span !== null);
  span.end();
  const text = tracer.traces(new URLSearchParams())[1];
  const written = /"start_ns":(\d+),"end_ns":(\d+)/.exec(text);
  assert.ok(written !== null, text);
  assert.equal(written[1], String(span.startNs));
  assert.equal(written[2], String(span.endNs));
  assert.ok(written[1].length >= 19, written[1]);
});

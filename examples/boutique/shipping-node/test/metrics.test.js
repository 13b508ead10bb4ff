import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { test } from 'node:test';

import { loadConfig } from '../src/config.js';
import { BUCKETS, createMetrics } from '../src/metrics.js';
import { rpcServer } from '../src/rpc.js';
import { Tracer } from '../src/spans.js';
import { Verifier, decodeKey, sign } from '../src/tokens.js';

const KEY = 't9uNjClJ4l0suO0qpXH_BfNQilF7h8ilVuLG9cEU1pQ';
const OPERATOR_KEY = 'b3BlcmF0b3Ita2V5LW9mLXRoZS10ZXN0cy0wMTIzNDU2';
const SCRAPE = 'the-deployments-scrape-token';
const NOW = 2000000000 - 60;
const KEYRING = {
  verifying: { 'checkout>shipping': [KEY], 'operator>shipping': [OPERATOR_KEY] },
  scrape: [createHash('sha256').update(SCRAPE).digest('hex')],
};
const bearer = (/** @type {string} */ token) => `Bearer ${token}`;
const NEEDS = { status: 401, message: 'this endpoint needs the scrape token or an operator credential' };

test('the scrape token or an operator token for shipping may observe; nothing else may', () => {
  const v = new Verifier(KEYRING, () => NOW);
  v.observer(bearer(SCRAPE));
  v.observer(bearer(sign(decodeKey(OPERATOR_KEY), 'operator', 'shipping', NOW + 60)));
  for (const refused of [
    undefined,
    '',
    `Basic ${SCRAPE}`,
    bearer(`${SCRAPE}x`),
    bearer(sign(decodeKey(KEY), 'checkout', 'shipping', NOW + 60)), // a caller, not the operator
    bearer(sign(decodeKey(OPERATOR_KEY), 'operator', 'payment', NOW + 60)), // another service's
    bearer(sign(decodeKey(OPERATOR_KEY), 'operator', 'shipping', NOW - 600)), // expired
    bearer('v1.operator.shipping.1.x'),
  ]) {
    assert.throws(() => v.observer(refused), NEEDS, String(refused));
  }
});

test('ARCHIPEL_OPEN_ENDPOINTS takes archipel names only; the keyring carries scrape digests', () => {
  const keyring = JSON.stringify({ ...KEYRING, mqtt_username: 'u', mqtt_password: 'p' });
  assert.deepEqual(loadConfig({ ARCHIPEL_KEYRING: keyring, ARCHIPEL_OPEN_ENDPOINTS: 'metrics, openapi' }).openEndpoints, ['metrics', 'openapi']);
  assert.deepEqual(loadConfig({ ARCHIPEL_KEYRING: keyring }).keyring?.scrape, KEYRING.scrape);
  assert.throws(() => loadConfig({ ARCHIPEL_KEYRING: keyring, ARCHIPEL_OPEN_ENDPOINTS: 'metrics,health' }), /ARCHIPEL_OPEN_ENDPOINTS=.*unknown health; choose among metrics, openapi, asyncapi, traces/);
  assert.throws(() => loadConfig({ ARCHIPEL_KEYRING: JSON.stringify({ scrape: ['xyz'] }) }), /scrape is not a list of hex digests/);
});

/**
 * A server on a free port for `fn`, closed after.
 * @param {{open?: string[], verifier?: Verifier | null, tracer?: Tracer}} options @param {(url: string) => Promise<void>} fn
 */
async function serving(options, fn) {
  const metrics = createMetrics({ process: 'shipping', replica: 'shipping-0', version: 'v1', service: 'shipping', handler: 'ship_placed_order' });
  const verifier = options.verifier === undefined ? new Verifier(KEYRING) : options.verifier;
  const tracer = options.tracer ?? new Tracer({ process: 'shipping' });
  const rpc = rpcServer({ verifier, maxBody: 1 << 20, version: 'v1', ready: () => true, metrics, tracer, open: options.open });
  rpc.server.listen(0, '127.0.0.1');
  await once(rpc.server, 'listening');
  const address = /** @type {import('node:net').AddressInfo} */ (rpc.server.address());
  try {
    await fn(`http://127.0.0.1:${address.port}`);
  } finally {
    await rpc.close(1);
  }
}

test('/metrics: 401 with the challenge without a credential, the exposition with the scrape token', async () => {
  await serving({}, async (url) => {
    const refused = await fetch(`${url}/metrics`);
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('www-authenticate'), 'Bearer realm="archipel"');
    assert.deepEqual(await refused.json(), { error: { kind: 'unauthenticated', message: NEEDS.message } });
    const call = await fetch(`${url}/shipping/get_quote`, { method: 'POST', body: '{}' });
    assert.equal(call.status, 401);
    const scraped = await fetch(`${url}/metrics`, { headers: { authorization: bearer(SCRAPE) } });
    assert.equal(scraped.status, 200);
    assert.match(scraped.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await scraped.text();
    assert.match(text, /^archipel_rpc_requests_total\{service="shipping",method="get_quote",status="401"\} 1$/m);
    assert.match(text, /^archipel_rpc_requests_total\{service="shipping",method="ship_order",status="200"\} 0$/m);
    assert.match(text, /^archipel_process_info\{process="shipping",replica="shipping-0",version="v1"\} 1$/m);
    assert.match(text, /^process_resident_memory_bytes \d+$/m);
    assert.match(text, /^process_start_time_seconds \d+$/m);
    const bounds = [...text.matchAll(/^archipel_rpc_duration_seconds_bucket\{le="([^"]+)",service="shipping",method="get_quote"\}/gm)].map((m) => m[1]);
    assert.deepEqual(bounds, [...BUCKETS.map(String), '+Inf']);
  });
});

test('/metrics is open with ARCHIPEL_OPEN_ENDPOINTS=metrics, or with ARCHIPEL_AUTHENTICATE=0', async () => {
  for (const options of [{ open: ['metrics'] }, { verifier: null }]) {
    await serving(options, async (url) => {
      assert.equal((await fetch(`${url}/metrics`)).status, 200);
    });
  }
});

test("a path naming another service of the shop is 'not served by this process', as archipel says", async () => {
  await serving({}, async (url) => {
    const get = async (/** @type {string} */ path, method = 'POST') => {
      const response = await fetch(`${url}${path}`, { method });
      return [response.status, await response.json()];
    };
    assert.deepEqual(await get('/cart/get_cart'), [404, { error: { kind: 'not_found', message: "service 'cart' is not served by this process", service: 'cart', method: 'get_cart' } }]);
    assert.deepEqual(await get('/cart/nothing/', 'GET'), [404, { error: { kind: 'not_found', message: "service 'cart' is not served by this process", service: 'cart', method: 'nothing' } }]);
    assert.deepEqual(await get('/shipping/nothing/'), [404, { error: { kind: 'not_found', message: "service 'shipping' has no rpc method 'nothing'", service: 'shipping', method: 'nothing' } }]);
    assert.deepEqual(await get('/shipping/get_quote/'), [404, { error: { kind: 'not_found', message: 'no route POST /shipping/get_quote/', service: 'shipping', method: 'get_quote' } }]);
    assert.deepEqual(await get('/shop/get_cart'), [404, { error: { kind: 'not_found', message: 'no route POST /shop/get_cart' } }]);
    assert.deepEqual(await get('/metrics', 'POST'), [404, { error: { kind: 'not_found', message: 'no route POST /metrics' } }]);
  });
});

const ADDRESS = { street_address: '1 Rue de la Paix', city: 'Paris', state: 'IDF', country: 'FR', zip_code: '75002' };
const PARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

test('/traces: each call served is a span under the caller traceparent, guarded as /metrics', async () => {
  await serving({ verifier: null }, async (url) => {
    const call = (/** @type {Record<string, string>} */ headers, body = { address: ADDRESS, items: [] }) =>
      fetch(`${url}/shipping/get_quote`, { method: 'POST', headers, body: JSON.stringify(body) });
    assert.equal((await call({ traceparent: PARENT })).status, 200);
    assert.equal((await call({ traceparent: PARENT }, { items: [] })).status, 422);
    assert.equal((await call({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00' })).status, 200);
    const traces = await (await fetch(`${url}/traces?trace_id=4bf92f3577b34da6a3ce929d0e0e4736`)).json();
    assert.equal(traces.process, 'shipping');
    // The 422 is refused before the method runs: no span, as a Python worker; unsampled: none.
    assert.equal(traces.spans.length, 1, JSON.stringify(traces));
    const [span] = traces.spans;
    assert.deepEqual(
      [span.name, span.kind, span.service, span.parent_id, span.status],
      ['shipping.get_quote', 'server', 'shipping', '00f067aa0ba902b7', 'ok'],
    );
    assert.deepEqual(span.attributes, {
      'rpc.system': 'archipel', 'rpc.service': 'shipping', 'rpc.method': 'get_quote',
      'archipel.service': 'shipping', 'http.response.status_code': 200,
    });
    assert.match(span.span_id, /^[0-9a-f]{16}$/);
    assert.ok(Number.isInteger(span.start_ns) && span.end_ns >= span.start_ns, JSON.stringify(span));
    assert.ok(Math.abs(span.start_ns / 1e6 - Date.now()) < 60_000, 'start_ns is nanoseconds since the epoch');
  });
  await serving({}, async (url) => {
    const refused = await fetch(`${url}/traces`);
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('www-authenticate'), 'Bearer realm="archipel"');
    assert.equal((await fetch(`${url}/traces`, { headers: { authorization: bearer(SCRAPE) } })).status, 200);
  });
  await serving({ open: ['traces'] }, async (url) => {
    assert.equal((await fetch(`${url}/traces`)).status, 200);
    assert.equal((await fetch(`${url}/metrics`)).status, 401, 'opening /traces leaves /metrics guarded');
  });
});

test('/traces: a bad trace_id or limit is a 400 naming it, as a Python worker answers', async () => {
  await serving({ verifier: null }, async (url) => {
    const get = async (/** @type {string} */ query) => {
      const response = await fetch(`${url}/traces?${query}`);
      return [response.status, await response.json()];
    };
    assert.deepEqual(await get('trace_id=XYZ'), [400, { error: { kind: 'bad_request', message: "trace_id must be 32 lower-case hex digits, got 'XYZ'" } }]);
    assert.deepEqual(await get('limit=-1'), [400, { error: { kind: 'bad_request', message: "limit must be a whole number >= 0, got '-1'" } }]);
    assert.deepEqual(await get('limit=0'), [200, { process: 'shipping', spans: [] }]);
  });
});

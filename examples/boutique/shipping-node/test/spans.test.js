import assert from 'node:assert/strict';
import { test } from 'node:test';

import { diag } from '@opentelemetry/api';

import { batchOptions, exporterNames, readable, reportSdkProblems } from '../src/export.js';
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

test('the OTEL_* variables are read as a Python worker reads them, a bad one named', () => {
  assert.deepEqual(exporterNames({}), []);
  assert.deepEqual(exporterNames({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' }), ['otlp']);
  assert.deepEqual(exporterNames({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_TRACES_EXPORTER: 'none' }), []);
  assert.deepEqual(exporterNames({ OTEL_TRACES_EXPORTER: 'console, otlp' }), ['console', 'otlp']);
  assert.throws(() => exporterNames({ OTEL_TRACES_EXPORTER: 'zipkin,jaeger' }), {
    message: "OTEL_TRACES_EXPORTER='zipkin,jaeger': unknown jaeger, zipkin; use otlp, console or none",
  });
  assert.throws(() => exporterNames({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' }), {
    message: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='grpc': archipel exports spans over http/protobuf only",
  });
  assert.deepEqual(batchOptions({ OTEL_BSP_SCHEDULE_DELAY: '50', OTEL_BSP_MAX_QUEUE_SIZE: ' 10 ' }), {
    scheduledDelayMillis: 50,
    maxQueueSize: 10,
  });
  assert.throws(() => batchOptions({ OTEL_BSP_EXPORT_TIMEOUT: '1s' }), { message: "OTEL_BSP_EXPORT_TIMEOUT='1s': expected a whole number" });
});

test('an exported span carries its ids, parent, times, kind and status as the SDK reads them', () => {
  const tracer = new Tracer({ process: 'shipping' });
  const span = tracer.start('shipping.get_quote', 'server', PARENT, { 'rpc.method': 'get_quote' });
  assert.ok(span !== null);
  span.fail('invalid_argument', 'bad address');
  const out = readable(span, null);
  assert.deepEqual(out.spanContext(), { traceId: span.traceId, spanId: span.spanId, traceFlags: 1 });
  assert.deepEqual(out.parentSpanContext, { traceId: span.traceId, spanId: '00f067aa0ba902b7', traceFlags: 1, isRemote: true });
  assert.equal(out.kind, 1); // SpanKind.SERVER
  assert.deepEqual(out.status, { code: 2, message: 'bad address' }); // SpanStatusCode.ERROR
  assert.equal(BigInt(out.startTime[0]) * 1_000_000_000n + BigInt(out.startTime[1]), span.startNs);
});

test("the SDK's complaints reach the log: the first at once, then one line a minute with the count", () => {
  /** @type {[string, string][]} */
  const lines = [];
  let now = 1_000_000;
  reportSdkProblems((level, message) => lines.push([level, message]), () => now);
  const failed = JSON.stringify({ stack: 'Error: connect ECONNREFUSED\n at x', message: 'connect ECONNREFUSED 127.0.0.1:9', name: 'Error' });
  diag.error(failed);
  diag.error(failed);
  diag.warn('queue full');
  diag.info('not shown');
  now += 61_000;
  diag.error(failed);
  assert.deepEqual(lines, [
    ['ERROR', 'OpenTelemetry: Error: connect ECONNREFUSED 127.0.0.1:9'],
    ['ERROR', 'OpenTelemetry: Error: connect ECONNREFUSED 127.0.0.1:9 (and 2 more in the last 60 s)'],
  ]);
  diag.disable();
});

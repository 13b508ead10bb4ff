/**
 * Spans of this process, as archipel's workers record them (archipel/_telemetry/spans.py): one per
 * RPC served, per event handled and per event published, under the `traceparent` the call or the
 * event carried, kept in a ring of the last 2,000 and served as `GET /traces` in the same JSON, so
 * the dashboard's trace view shows this hop like any other; and to OTLP when configured (export.js).
 */
import { randomBytes } from 'node:crypto';

import { errorBody, pythonRepr } from './errors.js';
import { readable } from './export.js';

export const RING_SIZE = 2000; // finished spans kept, as a Python worker keeps
export const DEFAULT_LIMIT = 500; // spans /traces answers with unless ?limit= says otherwise
export const SERVICE_ATTRIBUTE = 'archipel.service';
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const TRACE_ID = /^[0-9a-f]{32}$/;
const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);

/** @typedef {'server' | 'client' | 'producer' | 'consumer' | 'internal'} SpanKind */
/** @typedef {Record<string, string | number | boolean>} Attributes */

/** A nanosecond wall clock: Date.now() for the epoch, hrtime for the resolution. */
const epochNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
const nowNs = () => epochNs + process.hrtime.bigint();

/** @param {number} bytes */
const hexId = (bytes) => {
  for (;;) {
    const id = randomBytes(bytes).toString('hex');
    if (/[^0]/.test(id)) return id; // all zeros is an invalid id (W3C Trace Context)
  }
};

/** Whether `value` has the shape of a W3C `traceparent` (an event carrying another is treated as carrying none). @param {string} value */
export function wellFormedTraceparent(value) {
  return TRACEPARENT.test(value);
}

/** A new span id under `parent`'s trace, or a new trace: what is carried on when no span is recorded. @param {string | undefined} parent */
export function childTraceparent(parent) {
  const match = parent === undefined ? null : TRACEPARENT.exec(parent);
  return `00-${match ? match[1] : hexId(16)}-${hexId(8)}-${match ? match[3] : '01'}`;
}

/** `traceparent` as [trace id, parent span id, flags], or null when absent or malformed. @param {string | undefined} value */
export function parseTraceparent(value) {
  const match = value === undefined ? null : TRACEPARENT.exec(value);
  if (match === null || match[1] === ZERO_TRACE || match[2] === ZERO_SPAN) return null;
  return [match[1], match[2], match[3]];
}

export class Span {
  /** @param {Tracer} tracer @param {string} name @param {SpanKind} kind @param {string} traceId @param {string | null} parentId @param {Attributes} attributes */
  constructor(tracer, name, kind, traceId, parentId, attributes) {
    this.tracer = tracer;
    this.name = name;
    this.kind = kind;
    this.traceId = traceId;
    this.parentId = parentId;
    this.spanId = hexId(8);
    this.attributes = attributes;
    this.startNs = nowNs();
    this.endNs = 0n;
    /** @type {string | null} the status' description when it ended with an error */
    this.error = null;
  }

  /** This span as the parent of the next hop's: what the call or the event carries. */
  get traceparent() {
    return `00-${this.traceId}-${this.spanId}-01`;
  }

  end() {
    this.endNs = nowNs();
    this.tracer.finish(this);
  }

  /** End with an error: `kind` is the error's kind (`error.type`). @param {string} kind @param {string} [message] */
  fail(kind, message = '') {
    this.attributes['error.type'] = kind;
    this.error = message.slice(0, 256) || kind;
    this.end();
  }

  /** The span as `GET /traces` shows it. Nanoseconds since the epoch exceed 2^53, so the JSON
   * is put together here: a number would round them. */
  json() {
    const head = JSON.stringify({
      trace_id: this.traceId,
      span_id: this.spanId,
      parent_id: this.parentId,
      name: this.name,
      kind: this.kind,
      service: String(this.attributes[SERVICE_ATTRIBUTE] ?? ''),
    });
    const tail = JSON.stringify({ status: this.error === null ? 'ok' : 'error', attributes: this.attributes });
    return `${head.slice(0, -1)},"start_ns":${this.startNs},"end_ns":${this.endNs},${tail.slice(1)}`;
  }
}

export class Tracer {
  /**
   * @param {{process: string, enabled?: boolean, size?: number,
   *   processors?: import('@opentelemetry/sdk-trace').SpanProcessor[], resource?: any}} options
   *   processors: the SDK's span processors that export (export.js), each finished span handed over
   */
  constructor({ process, enabled = true, size = RING_SIZE, processors = [], resource = null }) {
    this.process = process;
    this.enabled = enabled;
    this.size = size;
    this.processors = processors;
    this.resource = resource;
    /** @type {Span[]} a circular buffer: the next span goes at `next`, over the oldest once full */
    this.ring = [];
    this.next = 0;
  }

  /**
   * A span under `parent` (a new trace when absent or malformed); null when tracing is off
   * (OTEL_SDK_DISABLED=true) or the parent was not sampled (flags 00: the caller asked for none).
   * @param {string} name @param {SpanKind} kind @param {string | undefined} parent @param {Attributes} attributes
   */
  start(name, kind, parent, attributes) {
    if (!this.enabled) return null;
    const parsed = parseTraceparent(parent);
    if (parsed === null) return new Span(this, name, kind, hexId(16), null, attributes);
    const [traceId, parentId, flags] = parsed;
    if ((parseInt(flags, 16) & 1) === 0) return null;
    return new Span(this, name, kind, traceId, parentId, attributes);
  }

  /** @param {Span} span */
  finish(span) {
    this.ring[this.next] = span;
    this.next = (this.next + 1) % this.size;
    if (this.processors.length > 0) {
      const exported = readable(span, this.resource);
      for (const processor of this.processors) processor.onEnd(/** @type {any} */ (exported));
    }
  }

  /** Send what the exporters still hold (at the process's stop), within `seconds`. @param {number} seconds */
  async shutdown(seconds) {
    if (this.processors.length === 0) return;
    let timer;
    const late = new Promise((resolve) => { timer = setTimeout(resolve, seconds * 1000); });
    await Promise.race([Promise.allSettled(this.processors.map((p) => p.shutdown())), late]);
    clearTimeout(timer);
  }

  /**
   * `GET /traces?trace_id=...&limit=N`: [status, JSON body], as archipel's Tracing.traces.
   * @param {URLSearchParams} query
   * @returns {[number, string]}
   */
  traces(query) {
    const traceId = query.getAll('trace_id').at(-1) ?? null;
    const rawLimit = query.getAll('limit').at(-1) ?? String(DEFAULT_LIMIT);
    if (traceId !== null && !TRACE_ID.test(traceId)) {
      return [400, errorBody('bad_request', `trace_id must be 32 lower-case hex digits, got ${pythonRepr(traceId.slice(0, 64))}`)];
    }
    if (!/^[0-9]+$/.test(rawLimit)) {
      return [400, errorBody('bad_request', `limit must be a whole number >= 0, got ${pythonRepr(rawLimit.slice(0, 64))}`)];
    }
    const all = this.ring.length < this.size ? this.ring : [...this.ring.slice(this.next), ...this.ring.slice(0, this.next)];
    let kept = traceId === null ? all : all.filter((span) => span.traceId === traceId);
    const limit = Number(rawLimit);
    kept = limit === 0 ? [] : kept.slice(-limit);
    return [200, `{"process":${JSON.stringify(this.process)},"spans":[${kept.map((span) => span.json()).join(',')}]}`];
  }
}

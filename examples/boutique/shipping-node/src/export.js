/**
 * Where finished spans go besides the ring of `/traces`: to an OpenTelemetry collector over
 * OTLP/HTTP (protobuf), batched, when the standard variables say so, with the OpenTelemetry JS
 * SDK's own exporter and batch processor. The same variables and the same refusals as a Python
 * worker (archipel/_telemetry/tracing.py):
 *
 * - `OTEL_TRACES_EXPORTER`: `otlp`, `console` or `none`; unset: `otlp` when an endpoint is set;
 * - `OTEL_EXPORTER_OTLP_ENDPOINT` (`{endpoint}/v1/traces`) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
 * - `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: `http/protobuf` only;
 * - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` win over the resource made here;
 * - headers and timeout: read by the SDK's exporter; `OTEL_BSP_*`: read here (this SDK's batch
 *   processor takes them as options only).
 */
import { DiagLogLevel, SpanKind, SpanStatusCode, TraceFlags, diag } from '@opentelemetry/api';

import { pythonRepr } from './errors.js';
import { log } from './log.js';

export const EXPORTER_VAR = 'OTEL_TRACES_EXPORTER';
const ENDPOINT_VARS = ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'];
const PROTOCOL_VARS = ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL'];
const KINDS = {
  server: SpanKind.SERVER,
  client: SpanKind.CLIENT,
  producer: SpanKind.PRODUCER,
  consumer: SpanKind.CONSUMER,
  internal: SpanKind.INTERNAL,
};

/**
 * The exporters `env` asks for (`otlp`, `console`), or an Error naming the variable at fault.
 * @param {Record<string, string | undefined>} env @returns {string[]}
 */
export function exporterNames(env) {
  const raw = (env[EXPORTER_VAR] ?? '').trim().toLowerCase();
  let names = raw.split(',').map((name) => name.trim()).filter(Boolean);
  if (!raw) names = ENDPOINT_VARS.some((name) => (env[name] ?? '').trim()) ? ['otlp'] : [];
  const unknown = [...new Set(names.filter((name) => !['otlp', 'console', 'none'].includes(name)))].sort();
  if (unknown.length > 0) {
    throw new Error(`${EXPORTER_VAR}=${pythonRepr(raw)}: unknown ${unknown.join(', ')}; use otlp, console or none`);
  }
  if (names.includes('none')) return [];
  if (names.includes('otlp')) {
    for (const variable of PROTOCOL_VARS) {
      const protocol = (env[variable] ?? '').trim();
      if (!protocol) continue;
      if (protocol !== 'http/protobuf') throw new Error(`${variable}=${pythonRepr(protocol)}: archipel exports spans over http/protobuf only`);
      break;
    }
  }
  return [...new Set(names)];
}

const BATCH_VARS = {
  OTEL_BSP_SCHEDULE_DELAY: 'scheduledDelayMillis',
  OTEL_BSP_EXPORT_TIMEOUT: 'exportTimeoutMillis',
  OTEL_BSP_MAX_QUEUE_SIZE: 'maxQueueSize',
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 'maxExportBatchSize',
};

/**
 * The batch processor's options `env` sets, or an Error naming the variable at fault.
 * @param {Record<string, string | undefined>} env @returns {Record<string, number>}
 */
export function batchOptions(env) {
  /** @type {Record<string, number>} */
  const options = {};
  for (const [variable, option] of Object.entries(BATCH_VARS)) {
    const raw = (env[variable] ?? '').trim();
    if (!raw) continue;
    if (!/^[0-9]+$/.test(raw)) throw new Error(`${variable}=${pythonRepr(raw)}: expected a whole number`);
    options[option] = Number(raw);
  }
  return options;
}

/**
 * The span processors for `names`, loaded only when asked for (the SDK costs start-up time), and
 * the resource the spans are exported with.
 * @param {string[]} names
 * @param {{deployment: string, process: string, instance: string}} who
 * @param {Record<string, number>} [batch] the batch processor's options (batchOptions)
 */
export async function spanProcessors(names, { deployment, process, instance }, batch = {}) {
  if (names.length === 0) return { processors: [], resource: null };
  reportSdkProblems();
  const { BatchSpanProcessor, ConsoleSpanExporter } = await import('@opentelemetry/sdk-trace');
  const { detectResources, envDetector, resourceFromAttributes } = await import('@opentelemetry/resources');
  const ours = resourceFromAttributes({
    'service.name': `${deployment}.${process}`,
    'service.namespace': deployment,
    'service.instance.id': instance,
    'archipel.process': process,
  });
  // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over ours: merge() prefers its argument's.
  const resource = ours.merge(detectResources({ detectors: [envDetector] }));
  const processors = [];
  for (const name of names) {
    if (name === 'console') {
      processors.push(new BatchSpanProcessor({ ...batch, exporter: new ConsoleSpanExporter() }));
    } else {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
      // Endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*, read by the exporter.
      processors.push(new BatchSpanProcessor({ ...batch, exporter: new OTLPTraceExporter() }));
    }
  }
  return { processors, resource };
}

export const REPORT_EVERY = 60; // seconds between two log lines of the SDK's complaints

/**
 * The SDK's errors and warnings (an export that failed: a collector down or unreachable) in this
 * process's log, the first at once, then at most one line a minute saying how many were left out:
 * a collector that is down must be seen, not flood the log with a line a batch.
 * @param {(level: string, message: string) => void} write @param {() => number} [now] milliseconds
 */
export function reportSdkProblems(write = log, now = Date.now) {
  let last = -Infinity;
  let left = 0;
  /** @param {string} level */
  const report = (level) => (/** @type {string} */ message, /** @type {unknown[]} */ ...args) => {
    if (now() - last < REPORT_EVERY * 1000) {
      left += 1;
      return;
    }
    const more = left > 0 ? ` (and ${left} more in the last ${REPORT_EVERY} s)` : '';
    write(level, `OpenTelemetry: ${[message, ...args].map(readableProblem).join(' ')}${more}`);
    last = now();
    left = 0;
  };
  const quiet = () => {};
  diag.setLogger(
    { error: report('ERROR'), warn: report('WARNING'), info: quiet, debug: quiet, verbose: quiet },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  );
}

/** The SDK hands an exception over as its JSON (stack and all): its name and message say enough. @param {unknown} problem */
function readableProblem(problem) {
  if (typeof problem === 'string' && problem.startsWith('{')) {
    try {
      const parsed = JSON.parse(problem);
      if (typeof parsed?.message === 'string') return `${parsed.name ?? 'Error'}: ${parsed.message}`;
    } catch {
      // not JSON after all: shown as it is
    }
  }
  return String(problem);
}

/** Nanoseconds as the SDK's HrTime. @param {bigint} ns @returns {[number, number]} */
const hrTime = (ns) => [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];

/**
 * `span` as the SDK's exporters take it (a ReadableSpan).
 * @param {import('./spans.js').Span} span @param {any} resource
 * @returns {import('@opentelemetry/sdk-trace').ReadableSpan}
 */
export function readable(span, resource) {
  const context = { traceId: span.traceId, spanId: span.spanId, traceFlags: TraceFlags.SAMPLED };
  const parent = span.parentId === null
    ? undefined
    : { traceId: span.traceId, spanId: span.parentId, traceFlags: TraceFlags.SAMPLED, isRemote: true };
  return {
    name: span.name,
    kind: KINDS[span.kind],
    spanContext: () => context,
    parentSpanContext: parent,
    startTime: hrTime(span.startNs),
    endTime: hrTime(span.endNs),
    duration: hrTime(span.endNs - span.startNs),
    status: span.error === null ? { code: SpanStatusCode.OK } : { code: SpanStatusCode.ERROR, message: span.error },
    attributes: span.attributes,
    links: [],
    events: [],
    ended: true,
    resource,
    instrumentationScope: { name: 'archipel' },
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
}

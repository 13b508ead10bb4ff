/**
 * The process's Prometheus metrics, served on `/metrics`: the families archipel's workers export
 * (archipel/_telemetry/metrics.py) with the same names, labels, units and buckets, for what this
 * service does, so that the live dashboard and a Prometheus read it as they read a Python worker.
 *
 * - `archipel_rpc_requests_total{service,method,status}`: requests served, by HTTP status (refusals
 *   before the handler included, as archipel/_rpc/server.py counts them), and
 *   `archipel_rpc_duration_seconds{service,method}`: time in the handler, decoding included.
 * - `archipel_events_handled_total{service,handler,outcome}`: OrderPlaced deliveries, `ok`,
 *   `retried` (a transient failure tried again) or `dead` (dead-lettered);
 *   `archipel_events_published_total{topic}`: OrderShipped emitted (dead letters are not counted,
 *   as archipel does not count them); `archipel_events_acked_total{topic}`: deliveries acknowledged.
 * - `archipel_process_info{process,replica,version}` and the process metrics (`process_cpu_seconds_total`,
 *   `process_resident_memory_bytes`, `process_start_time_seconds`...) under the names Python's
 *   client gives them. No `archipel_calls_total`: this service calls no other, and those series
 *   are the caller's (a callee exporting them would count every call twice on the dashboard).
 *
 * With prom-client (exact version in package.json) rather than by hand: its process metrics read
 * /proc like Python's ProcessCollector under the same names, and it escapes label values and
 * formats histograms as the text format wants.
 */
import client from 'prom-client';

/** archipel's buckets for call and request latency, in seconds. */
export const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * A registry with this process's metrics, and the ways to count into it.
 * @param {{process: string, replica: string, version: string, service: string, handler: string}} options
 */
export function createMetrics({ process, replica, version, service, handler }) {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  new client.Gauge({
    name: 'archipel_process_info',
    help: '1 for the process of a deployment this is: its name, its replica and its version.',
    labelNames: ['process', 'replica', 'version'],
    registers: [registry],
  }).set({ process, replica, version: version || 'unknown' }, 1);
  const requests = new client.Counter({
    name: 'archipel_rpc_requests_total',
    help: 'RPC requests served by this process, by outcome status.',
    labelNames: ['service', 'method', 'status'],
    registers: [registry],
  });
  const seconds = new client.Histogram({
    name: 'archipel_rpc_duration_seconds',
    help: 'Time spent serving an RPC request (handler plus decoding).',
    labelNames: ['service', 'method'],
    buckets: BUCKETS,
    registers: [registry],
  });
  const handled = new client.Counter({
    name: 'archipel_events_handled_total',
    help: 'Event deliveries to handlers, by outcome (ok, retried, dead).',
    labelNames: ['service', 'handler', 'outcome'],
    registers: [registry],
  });
  const published = new client.Counter({
    name: 'archipel_events_published_total',
    help: 'Events emitted by services of this process.',
    labelNames: ['topic'],
    registers: [registry],
  });
  const acked = new client.Counter({
    name: 'archipel_events_acked_total',
    help: 'Events acknowledged to the broker after their handlers returned.',
    labelNames: ['topic'],
    registers: [registry],
  });
  return {
    registry,
    /** Series at 0 from the start, as archipel's workers create them: a rate needs two samples. @param {string[]} methods */
    declare(methods) {
      for (const method of methods) {
        requests.inc({ service, method, status: '200' }, 0);
        seconds.zero({ service, method });
      }
      for (const outcome of ['ok', 'retried', 'dead']) handled.inc({ service, handler, outcome }, 0);
    },
    /** A request answered with `status`; `elapsed` seconds if it reached the handler. @param {string} method @param {number} status @param {number | null} elapsed */
    served(method, status, elapsed) {
      requests.inc({ service, method, status: String(status) });
      if (elapsed !== null) seconds.observe({ service, method }, elapsed);
    },
    /** @param {'ok' | 'retried' | 'dead'} outcome */
    handled(outcome) {
      handled.inc({ service, handler, outcome });
    },
    /** @param {string} topic */
    published(topic) {
      published.inc({ topic });
    },
    /** @param {string} topic */
    acked(topic) {
      acked.inc({ topic });
    },
    /** The text exposition and its content type. @returns {Promise<{type: string, text: string}>} */
    async expose() {
      return { type: registry.contentType, text: await registry.metrics() };
    },
  };
}

/** @typedef {ReturnType<typeof createMetrics>} Metrics */

/**
 * The HTTP server, with archipel's wire contract (archipel/_rpc/server.py): `POST /shipping/{method}`
 * with a JSON object of the arguments by name, the credential checked before the body is read,
 * the result as JSON (200) or `{"error": {...}}` with the error's status; `/healthz`, `/readyz`,
 * and `/metrics` and `/traces` for the scrape token or an operator (open them with
 * ARCHIPEL_OPEN_ENDPOINTS=metrics,traces). Each call served is a span (spans.js).
 */
import { createServer } from 'node:http';

import { ArchipelError, badRequest, errorBody, payloadTooLarge } from './errors.js';
import { log } from './log.js';
import { SERVICE_ATTRIBUTE } from './spans.js';
import { ARGUMENTS, ValidationError } from './schema.js';
import { getQuote, shipOrder } from './shipping.js';

const SERVICE = 'shipping';
/** The boutique's services: a path naming one of the others is "not served by this process". */
const REQUEST_TIMEOUT_MS = 10_000; // as archipel's worker: the whole request, head and body

export const APP_SERVICES = new Set([
  'ads', 'cart', 'catalog', 'checkout', 'currency', 'email', 'frontend', 'payment', 'recommendation', SERVICE,
]);
const TIMEOUT_HEADER = 'x-archipel-timeout-ms';
const JSON_TYPE = { 'content-type': 'application/json' };
const CHALLENGE = { ...JSON_TYPE, 'www-authenticate': 'Bearer realm="archipel"' };

/** @type {Record<string, (args: any) => unknown>} */
const METHODS = { get_quote: getQuote, ship_order: shipOrder };

/**
 * @param {{
 *   verifier: import('./tokens.js').Verifier | null, maxBody: number, version: string,
 *   ready: () => boolean, metrics: import('./metrics.js').Metrics,
 *   tracer: import('./spans.js').Tracer, open?: string[],
 * }} options
 */
export function rpcServer({ verifier, maxBody, version, ready, metrics, tracer, open = [] }) {
  metrics.declare(Object.keys(METHODS));
  const state = { draining: false };

  /** @param {import('node:http').ServerResponse} res @param {number} status @param {string} body @param {Record<string, string>} [headers] */
  const respond = (res, status, body, headers = JSON_TYPE) => {
    /** @type {Record<string, string>} */
    const all = { ...headers, 'content-length': String(Buffer.byteLength(body)) };
    if (state.draining) all.connection = 'close'; // shed kept-alive connections while draining
    res.writeHead(status, all);
    res.end(body);
  };

  const server = createServer({ maxHeaderSize: 16 * 1024, connectionsCheckingInterval: 1_000 }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const method = req.method ?? 'GET';
    const name = path.startsWith(`/${SERVICE}/`) ? path.slice(SERVICE.length + 2) : null;
    if (name !== null && Object.hasOwn(METHODS, name) && method === 'POST') {
      call(name, req, res).catch((error) => {
        log('ERROR', `${SERVICE}.${name} failed to answer: ${error}`);
        res.destroy();
      });
    } else if (method === 'GET' && path === '/healthz') {
      respond(res, 200, '{"status":"ok"}');
    } else if (method === 'GET' && path === '/readyz') {
      const isReady = ready() && !state.draining;
      const body = { ready: isReady, draining: state.draining, version, services: [SERVICE], pid: process.pid };
      respond(res, isReady ? 200 : 503, JSON.stringify(body));
    } else if (method === 'GET' && (path === '/metrics' || path === '/traces')) {
      observe(path, req, res).catch((error) => {
        log('ERROR', `${path} failed: ${error}`);
        res.destroy();
      });
    } else {
      miss(path, method, res);
    }
    req.resume(); // a body nobody reads must not hold the connection
  });
  // The limits of archipel's worker (archipel/_rpc/limits.py, _deploy/worker.py): a request must
  // arrive whole within 10 s (a trickling client is cut off with 408), heads of at most 16 KiB,
  // kept-alive connections closed after 5 s idle (callers drop theirs at 4 s). Node checks the
  // timeouts every `connectionsCheckingInterval`: 1 s, not its default 30 s.
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = 5_000;

  /** A path that is no endpoint: archipel's RpcServer._rpc_miss for `/{service}/{method}` of the app. @param {string} path @param {string} method @param {import('node:http').ServerResponse} res */
  function miss(path, method, res) {
    const parts = path.replace(/^\/+|\/+$/g, '').split('/');
    if (parts.length !== 2 || !APP_SERVICES.has(parts[0])) {
      respond(res, 404, errorBody('not_found', `no route ${method} ${path}`));
      return;
    }
    const [service, name] = parts;
    let message;
    if (service !== SERVICE) message = `service '${service}' is not served by this process`;
    else if (!Object.hasOwn(METHODS, name)) message = `service '${service}' has no rpc method '${name}'`;
    else if (path !== `/${SERVICE}/${name}`) message = `no route ${method} ${path}`;
    else {
      respond(res, 405, errorBody('method_not_allowed', `use POST for ${path}`, service, name), { ...JSON_TYPE, allow: 'POST' });
      return;
    }
    respond(res, 404, errorBody('not_found', message, service, name));
  }

  /** `/metrics` or `/traces`: @param {string} path @param {import('node:http').IncomingMessage} req @param {import('node:http').ServerResponse} res */
  async function observe(path, req, res) {
    if (verifier !== null && !open.includes(path.slice(1))) {
      try {
        verifier.observer(req.headers.authorization);
      } catch (error) {
        if (!(error instanceof ArchipelError)) throw error;
        respond(res, error.status, errorBody(error.kind, error.message), CHALLENGE);
        return;
      }
    }
    if (path === '/traces') {
      const [status, body] = tracer.traces(new URL(req.url ?? '/', 'http://localhost').searchParams);
      respond(res, status, body);
      return;
    }
    const { type, text } = await metrics.expose();
    respond(res, 200, text, { 'content-type': type });
  }

  /** @param {string} name @param {import('node:http').IncomingMessage} req @param {import('node:http').ServerResponse} res */
  async function call(name, req, res) {
    let status = 200;
    let body;
    let headers = JSON_TYPE;
    /** @type {number | null} when the handler was reached (performance.now()) */
    let started = null;
    /** @type {import('./spans.js').Span | null} from then on, as a Python worker's ServeSpans */
    let span = null;
    /** @type {[string, string] | null} the error's kind and message */
    let failure = null;
    try {
      try {
        // Before the body is read: a caller without a credential costs no more than this.
        if (verifier !== null) verifier.caller(req.headers.authorization, SERVICE);
        const raw = await readBody(req, maxBody);
        const args = decode(name, raw);
        const timeout = req.headers[TIMEOUT_HEADER];
        if (typeof timeout === 'string' && !isMilliseconds(timeout)) {
          throw badRequest(`${TIMEOUT_HEADER} must be a number of ms`);
        }
        started = performance.now();
        const traceparent = req.headers.traceparent;
        span = tracer.start(`${SERVICE}.${name}`, 'server', typeof traceparent === 'string' ? traceparent : undefined, {
          'rpc.system': 'archipel', 'rpc.service': SERVICE, 'rpc.method': name, [SERVICE_ATTRIBUTE]: SERVICE,
        });
        body = JSON.stringify(METHODS[name](args));
      } catch (error) {
        if (error instanceof ArchipelError && error.status === 401) headers = CHALLENGE;
        throw error;
      }
    } catch (error) {
      if (error instanceof ArchipelError) {
        status = error.status;
        failure = [error.kind, error.message];
        body = errorBody(error.kind, error.message, SERVICE, name, error.details);
      } else {
        failure = [/** @type {Error} */ (error).name ?? 'Error', String(/** @type {Error} */ (error).message ?? error)];
        const id = [...crypto.getRandomValues(new Uint8Array(8))].map((b) => b.toString(16).padStart(2, '0')).join('');
        log('ERROR', `${SERVICE}.${name} raised (error id ${id}): ${/** @type {Error} */ (error).stack ?? error}`);
        status = 500;
        const message = `internal error in ${SERVICE}.${name}; error id ${id} in the service's log`;
        body = errorBody('internal', message, SERVICE, name, { error_id: id });
      }
    }
    metrics.served(name, status, started === null ? null : (performance.now() - started) / 1000);
    if (span !== null) {
      span.attributes['http.response.status_code'] = status;
      if (failure === null) span.end();
      else span.fail(...failure);
    }
    // Answered before its body was read (401, 413...): close, as archipel does, rather than read
    // (or wait for) the rest of a body nobody wants.
    if (!req.complete) headers = { ...headers, connection: 'close' };
    respond(res, status, body, headers);
  }

  return {
    server,
    state,
    /** Stop taking connections; resolves once the calls in progress are answered (or `seconds` passed). @param {number} seconds */
    close(seconds) {
      state.draining = true;
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          server.closeAllConnections();
          resolve(undefined);
        }, seconds * 1000);
        server.close(() => {
          clearTimeout(timer);
          resolve(undefined);
        });
        server.closeIdleConnections();
      });
    },
  };
}

/** What Python's float() reads, NaN excepted. @param {string} text */
function isMilliseconds(text) {
  const t = text.trim();
  return /^[+-]?(inf|infinity)$/i.test(t) || /^[+-]?([0-9]+(_[0-9]+)*)?(\.[0-9]*)?(e[+-]?[0-9]+)?$/i.test(t) && /[0-9]/.test(t);
}

/** @param {import('node:http').IncomingMessage} req @param {number} maxBody @returns {Promise<Buffer>} */
async function readBody(req, maxBody) {
  const declared = req.headers['content-length'];
  if (declared !== undefined && /^[0-9]+$/.test(declared) && Number(declared) > maxBody) {
    throw payloadTooLarge(`body of ${Number(declared)} bytes exceeds ${maxBody}`);
  }
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > maxBody) throw payloadTooLarge(`body exceeds ${maxBody} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** The arguments of method `name` from the request body, or a 400/422. @param {string} name @param {Buffer} raw */
export function decode(name, raw) {
  let text = raw.toString('utf8');
  if (text.trim() === '') text = '{}'; // no body is no arguments: a 422 names the first required one
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw badRequest(`body is not valid JSON: ${/** @type {Error} */ (error).message}`);
  }
  try {
    return /** @type {Record<string, import('./schema.js').Type>} */ (ARGUMENTS)[name].check(value, '$');
  } catch (error) {
    if (error instanceof ValidationError) {
      throw new ArchipelError('invalid_argument', 422, error.message, { path: error.path }, 'InvalidArgument');
    }
    throw error;
  }
}

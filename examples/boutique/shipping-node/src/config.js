/**
 * The process contract: configuration from ARCHIPEL_* variables only, parsed as
 * archipel/_deploy/environment.py parses them. A bad value throws a ConfigError naming the variable.
 */
import { readFileSync } from 'node:fs';

import { batchOptions, exporterNames } from './export.js';

export const APP = 'boutique'; // the app's name: events' `source` is /boutique/shipping
export const SERVICE = 'shipping';
const DEFAULT_MAX_BODY = 1 << 20;

export class ConfigError extends Error {}

/** @param {string} text */
function flag(text) {
  const lowered = text.toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(lowered)) return true;
  if (['0', 'false', 'no', 'off'].includes(lowered)) return false;
  throw new Error('expected 1 or 0');
}

/** @param {string} text */
function seconds(text) {
  const value = Number(text);
  if (!(value >= 0)) throw new Error('expected a number of seconds, 0 or more');
  return value;
}

/** @param {string} text */
function integer(text) {
  if (!/^[+-]?[0-9]+$/.test(text)) throw new Error(`invalid literal for int(): '${text}'`);
  return Number(text);
}

/** @param {string} text */
function port(text) {
  const value = integer(text);
  if (!(value >= 0 && value <= 65535)) throw new Error('expected a port number');
  return value;
}

/** @param {string} text */
function positive(text) {
  const value = integer(text);
  if (value < 1) throw new Error('expected a positive integer');
  return value;
}

/** Endpoints served without a credential (archipel/_rpc/server.py's OBSERVABLE). */
export const OBSERVABLE = ['metrics', 'openapi', 'asyncapi', 'traces'];

/** @param {string} text */
function endpoints(text) {
  const names = text.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = [...new Set(names.filter((n) => !OBSERVABLE.includes(n)))].sort();
  if (unknown.length > 0) throw new Error(`unknown ${unknown.join(', ')}; choose among ${OBSERVABLE.join(', ')}`);
  return names;
}

/** @param {string} text */
function broker(text) {
  if (!text.startsWith('mqtt://') && !text.startsWith('mqtts://')) {
    throw new Error('expected mqtt://host:port or mqtts://host:port');
  }
  return text;
}

/**
 * @typedef {{
 *   verifying: Record<string, string[]>, signing: Record<string, string[]>, scrape: string[],
 *   mqtt_username: string, mqtt_password: string
 * }} Keyring
 */

/** @param {string} text @returns {Keyring} */
function keyring(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`not a keyring: ${/** @type {Error} */ (error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not a keyring: expected a JSON object');
  for (const map of ['signing', 'verifying']) {
    const edges = value[map] ?? {};
    if (typeof edges !== 'object' || Array.isArray(edges)) throw new Error(`not a keyring: ${map} is not an object`);
    for (const [edge, keys] of Object.entries(edges)) {
      if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) {
        throw new Error(`not a keyring: ${map}[${JSON.stringify(edge)}] is not a list of keys`);
      }
    }
  }
  const scrape = value.scrape ?? [];
  if (!Array.isArray(scrape) || !scrape.every((d) => typeof d === 'string' && /^([0-9a-fA-F]{2})*$/.test(d))) {
    throw new Error('not a keyring: scrape is not a list of hex digests');
  }
  for (const field of ['mqtt_username', 'mqtt_password']) {
    if (value[field] !== undefined && typeof value[field] !== 'string') throw new Error(`not a keyring: ${field} is not a string`);
  }
  return {
    signing: value.signing ?? {},
    verifying: value.verifying ?? {},
    scrape,
    mqtt_username: value.mqtt_username ?? '',
    mqtt_password: value.mqtt_password ?? '',
  };
}

/** The OTEL_* exporters asked for and their batching, or a ConfigError naming the variable. @param {Record<string, string | undefined>} env */
function exporters(env) {
  try {
    return { names: exporterNames(env), batch: batchOptions(env) };
  } catch (error) {
    throw new ConfigError(/** @type {Error} */ (error).message);
  }
}

/**
 * The configuration `env` describes.
 * @param {Record<string, string | undefined>} env
 */
export function loadConfig(env) {
  /**
   * @template T
   * @param {string} variable @param {(text: string) => T} parse @param {T} fallback
   * @returns {T}
   */
  const read = (variable, parse, fallback) => {
    const raw = env[variable];
    if (raw === undefined || raw.trim() === '') return fallback;
    try {
      return parse(raw.trim());
    } catch (error) {
      throw new ConfigError(`${variable}=${JSON.stringify(raw)}: ${/** @type {Error} */ (error).message}`);
    }
  };
  const processName = read('ARCHIPEL_PROCESS', (t) => t, SERVICE);
  const services = read('ARCHIPEL_SERVICES', (t) => t.split(',').map((s) => s.trim()).filter(Boolean), [processName]);
  if (services.length !== 1 || services[0] !== SERVICE) {
    throw new ConfigError(`ARCHIPEL_SERVICES=${JSON.stringify(services.join(','))}: this process hosts ${SERVICE} only`);
  }
  const replica = read('ARCHIPEL_REPLICA', integer, 0);
  const config = {
    process: processName,
    host: read('ARCHIPEL_HOST', (t) => t, '0.0.0.0'),
    port: read('ARCHIPEL_PORT', port, 8000),
    broker: read('ARCHIPEL_BROKER', broker, /** @type {string | null} */ (null)),
    instance: read('ARCHIPEL_INSTANCE', (t) => t, `${processName}-${replica}`),
    version: read('ARCHIPEL_VERSION', (t) => t, ''),
    deployment: read('ARCHIPEL_DEPLOYMENT', (t) => t, APP),
    drain: read('ARCHIPEL_DRAIN', seconds, 5),
    drainDelay: read('ARCHIPEL_DRAIN_DELAY', seconds, 0),
    authenticate: read('ARCHIPEL_AUTHENTICATE', flag, true),
    brokerLogin: read('ARCHIPEL_BROKER_LOGIN', flag, true),
    durable: read('ARCHIPEL_DURABLE', flag, true),
    maxBody: read('ARCHIPEL_MAX_BODY', positive, DEFAULT_MAX_BODY),
    supervisorPid: read('ARCHIPEL_SUPERVISOR_PID', integer, 0),
    reusePort: read('ARCHIPEL_REUSE_PORT', flag, false),
    replica,
    openEndpoints: read('ARCHIPEL_OPEN_ENDPOINTS', endpoints, /** @type {string[]} */ ([])),
    // As a Python worker: OTEL_SDK_DISABLED=true records no span and /traces answers an empty list.
    tracingDisabled: (env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true',
    /** Where spans are exported besides /traces (export.js): `otlp`, `console` or none, and the batching. */
    exporters: exporters(env),
    /** @type {Keyring | null} */
    keyring: null,
  };
  if (env.ARCHIPEL_KEYRING) {
    config.keyring = read('ARCHIPEL_KEYRING', keyring, null);
  } else if (env.ARCHIPEL_KEYRING_FILE) {
    const file = env.ARCHIPEL_KEYRING_FILE;
    let text;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ConfigError(`ARCHIPEL_KEYRING_FILE: cannot read ${file}: ${/** @type {Error} */ (error).message}`);
    }
    try {
      config.keyring = keyring(text);
    } catch (error) {
      throw new ConfigError(`ARCHIPEL_KEYRING_FILE=${file}: ${/** @type {Error} */ (error).message}`);
    }
  }
  if (config.keyring === null && config.authenticate) {
    throw new ConfigError(
      `${SERVICE} serves internal methods but has no credentials to check its callers: ` +
        'set ARCHIPEL_KEYRING (or ARCHIPEL_KEYRING_FILE) to its keyring, or ARCHIPEL_AUTHENTICATE=0',
    );
  }
  if (config.broker !== null && config.brokerLogin && !config.keyring?.mqtt_username) {
    throw new ConfigError(
      'the broker login comes from ARCHIPEL_KEYRING (or ARCHIPEL_KEYRING_FILE): set it, or ARCHIPEL_BROKER_LOGIN=0',
    );
  }
  return config;
}

/** @typedef {ReturnType<typeof loadConfig>} Config */

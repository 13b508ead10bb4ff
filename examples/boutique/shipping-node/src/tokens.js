/**
 * Call credentials, checked as archipel/_security/tokens.py's Verifier checks them: a token reads
 * `v1.{caller}.{callee}.{expiry}.{signature}`, the signature HMAC-SHA256 of the edge key over
 * `v1.{caller}.{callee}.{expiry}` in unpadded base64url, sent as `authorization: Bearer <token>`.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

import { ArchipelError, permissionDenied, unauthenticated } from './errors.js';

export const MAX_TTL = 300; // seconds a token may claim to live
export const CLOCK_SKEW = 30; // seconds of clock disagreement tolerated
const CACHE_SIZE = 4096;
const PREFIX = 'Bearer ';
const VERSION = 'v1';
export const OPERATOR = 'operator'; // the identity of tools and tests holding the secret

/** A keyring key (base64url, padding optional) as bytes. @param {string} key */
export function decodeKey(key) {
  return Buffer.from(key.replaceAll('-', '+').replaceAll('_', '/'), 'base64');
}

/** @param {Buffer} key @param {string} caller @param {string} callee @param {bigint | number} expiry */
export function sign(key, caller, callee, expiry) {
  const claims = `${VERSION}.${caller}.${callee}.${expiry}`;
  const mac = createHmac('sha256', key).update(claims, 'utf8').digest('base64url');
  return `${claims}.${mac}`;
}

/** Python's int() on ASCII text: optional sign, digits with single underscores, spaces around. */
const INTEGER = /^[ \t\n\r\v\f]*[+-]?[0-9]+(?:_[0-9]+)*[ \t\n\r\v\f]*$/;

/** (caller, callee, expiry) as a token claims them, before any check. @param {string} token */
function parse(token) {
  const parts = token.split('.');
  // eslint-disable-next-line no-control-regex
  if (parts.length !== 5 || /[^\x00-\x7f]/.test(token) || !INTEGER.test(parts[3])) {
    throw unauthenticated('the credential is malformed');
  }
  const [version, caller, audience, rawExpiry] = parts;
  if (version !== VERSION) throw unauthenticated(`unknown credential version ${pyRepr(version.slice(0, 10))}`);
  return { caller, audience, expiry: BigInt(rawExpiry.trim().replaceAll('_', '')) };
}

/** Python's repr of a short ASCII string. @param {string} text */
function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const body = [...text]
    .map((c) => {
      if (c === '\\') return '\\\\';
      if (c === quote) return `\\${c}`;
      if (c === '\n') return '\\n';
      if (c === '\r') return '\\r';
      if (c === '\t') return '\\t';
      const code = /** @type {number} */ (c.codePointAt(0));
      return code < 0x20 || code === 0x7f ? `\\x${code.toString(16).padStart(2, '0')}` : c;
    })
    .join('');
  return `${quote}${body}${quote}`;
}

/** @param {string} a @param {string} b */
function sameText(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export class Verifier {
  /**
   * @param {{verifying?: Record<string, string[]>, scrape?: string[]}} keyring
   * @param {() => number} [clock] seconds since the epoch
   */
  constructor(keyring, clock = () => Date.now() / 1000) {
    /** @type {Map<string, Buffer[]>} */
    this.keys = new Map(Object.entries(keyring.verifying ?? {}).map(([edge, keys]) => [edge, keys.map(decodeKey)]));
    this.clock = clock;
    /** The services this process answers for: the callees of its keys. */
    this.callees = new Set([...this.keys.keys()].map((edge) => edge.split('>')[1]));
    /** SHA-256 of the deployment's scrape tokens. */
    this.scrape = (keyring.scrape ?? []).map((digest) => Buffer.from(digest, 'hex'));
    /** @type {Map<string, {caller: string, audience: string, expiry: bigint}>} */
    this.seen = new Map();
  }

  /**
   * Let an operator (a token of the operator for one of this process's services) or a scraper
   * (the deployment's scrape token) read /metrics; throws 401 otherwise (Verifier.observer).
   * @param {string | undefined} authorization the header's value
   */
  observer(authorization) {
    if (authorization && authorization.startsWith(PREFIX)) {
      const token = authorization.slice(PREFIX.length).trim();
      const digest = createHash('sha256').update(token, 'utf8').digest();
      if (this.scrape.some((known) => known.length === digest.length && timingSafeEqual(known, digest))) return;
      try {
        const { audience } = this.seen.get(token) ?? parse(token);
        if (this.callees.has(audience) && this.caller(authorization, audience) === OPERATOR) return;
      } catch (error) {
        if (!(error instanceof ArchipelError)) throw error;
      }
    }
    throw unauthenticated('this endpoint needs the scrape token or an operator credential');
  }

  /**
   * The caller named by a valid credential for `callee`; throws 401 (Unauthenticated) or 403.
   * @param {string | undefined} authorization the header's value
   * @param {string} callee
   */
  caller(authorization, callee) {
    if (!authorization) throw unauthenticated(`calls to ${callee} need a credential (authorization: Bearer ...)`);
    if (!authorization.startsWith(PREFIX)) throw unauthenticated("the authorization header must be 'Bearer <token>'");
    const token = authorization.slice(PREFIX.length).trim();
    const seen = this.seen.get(token);
    const claims = seen ?? parse(token);
    if (claims.audience !== callee) {
      throw unauthenticated(`the credential was made for service ${[...claims.audience].slice(0, 64).join('')}, not ${callee}`);
    }
    if (seen === undefined) this.verify(token, claims, callee);
    if (Number(claims.expiry) + CLOCK_SKEW < this.clock()) {
      this.seen.delete(token);
      throw unauthenticated('the credential has expired');
    }
    return claims.caller;
  }

  /**
   * @param {string} token @param {{caller: string, audience: string, expiry: bigint}} claims
   * @param {string} callee
   */
  verify(token, claims, callee) {
    const keys = this.keys.get(`${claims.caller}>${callee}`);
    if (keys === undefined) {
      throw permissionDenied(`${[...claims.caller].slice(0, 64).join('')} may not call ${callee} (not one of its declared callers)`);
    }
    if (!keys.some((key) => sameText(sign(key, claims.caller, callee, claims.expiry), token))) {
      throw unauthenticated("the credential's signature is not valid");
    }
    if (Number(claims.expiry) > this.clock() + MAX_TTL + CLOCK_SKEW) {
      throw unauthenticated(`the credential claims to live longer than ${MAX_TTL}s`);
    }
    if (this.seen.size >= CACHE_SIZE) this.seen.clear();
    this.seen.set(token, claims);
  }
}

/**
 * The errors that cross the wire, as Archipel's declared errors (archipel/_errors.py): each has a
 * `kind` and an HTTP `status`, and travels as `{"error": {kind, message, service, method, details}}`.
 */

export class ArchipelError extends Error {
  /**
   * @param {string} kind
   * @param {number} status
   * @param {string} message
   * @param {unknown} [details]
   * @param {string} [className] the Python class name (dead-letter reasons name it)
   */
  constructor(kind, status, message, details = undefined, className = 'ArchipelError') {
    super(message);
    this.kind = kind;
    this.status = status;
    this.details = details;
    this.className = className;
  }
}

export const badRequest = (/** @type {string} */ m) => new ArchipelError('bad_request', 400, m, undefined, 'BadRequest');
export const unauthenticated = (/** @type {string} */ m) =>
  new ArchipelError('unauthenticated', 401, m, undefined, 'Unauthenticated');
export const permissionDenied = (/** @type {string} */ m) =>
  new ArchipelError('permission_denied', 403, m, undefined, 'PermissionDenied');
export const invalidArgument = (/** @type {string} */ m, /** @type {unknown} */ details = undefined) =>
  new ArchipelError('invalid_argument', 422, m, details, 'InvalidArgument');
export const payloadTooLarge = (/** @type {string} */ m) =>
  new ArchipelError('payload_too_large', 413, m, undefined, 'PayloadTooLarge');

/**
 * The JSON error body archipel's RPC server sends (ErrorResponse with omit_defaults: empty
 * service/method and null details are left out).
 * @param {string} kind @param {string} message @param {string} [service] @param {string} [method]
 * @param {unknown} [details]
 */
export function errorBody(kind, message, service = '', method = '', details = undefined) {
  /** @type {Record<string, unknown>} */
  const error = { kind, message };
  if (service) error.service = service;
  if (method) error.method = method;
  if (details !== undefined && details !== null) error.details = details;
  return JSON.stringify({ error });
}

/** A string quoted as Python's repr() quotes one, as a Python worker's messages show values. @param {string} text */
export function pythonRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const body = text.replaceAll('\\', '\\\\').replaceAll(quote, `\\${quote}`);
  return `${quote}${body}${quote}`;
}

/**
 * Decoding and validation of JSON values against the shop's types (examples/boutique/boutique/
 * types.py), refusing exactly what msgspec refuses there, with msgspec's messages and the path of
 * the offending field (`$.items[0].quantity`). Unknown fields are ignored, as msgspec does.
 */

/** @typedef {{check: (value: unknown, path: string) => unknown}} Type */

export class ValidationError extends Error {
  /** @param {string} message @param {string} path */
  constructor(message, path) {
    super(path === '$' ? message : `${message} - at \`${path}\``);
    this.path = path;
  }
}

/** msgspec's name of a JSON value's type. @param {unknown} value */
function kindOf(value) {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'number') return Number.isInteger(value) ? 'int' : 'float';
  if (typeof value === 'string') return 'str';
  if (Array.isArray(value)) return 'array';
  return 'object';
}

/** @param {string} expected @param {unknown} value @param {string} path */
function wrongType(expected, value, path) {
  return new ValidationError(`Expected \`${expected}\`, got \`${kindOf(value)}\``, path);
}

/** Python's `$`: the end, or before a final newline. @param {string} source */
export function pythonRegex(source) {
  return new RegExp(source.endsWith('$') ? `${source.slice(0, -1)}(?=\\n?$)` : source, 'u');
}

/**
 * @param {{min?: number, max?: number, pattern?: string, shown?: string}} [rules]
 *   `shown`: the pattern as Python's repr prints it in msgspec's message
 * @returns {Type}
 */
export function str(rules = {}) {
  const regex = rules.pattern === undefined ? null : pythonRegex(rules.pattern);
  return {
    check(value, path) {
      if (typeof value !== 'string') throw wrongType('str', value, path);
      const length = [...value].length; // code points, as Python counts
      if (rules.min !== undefined && length < rules.min)
        throw new ValidationError(`Expected \`str\` of length >= ${rules.min}`, path);
      if (rules.max !== undefined && length > rules.max)
        throw new ValidationError(`Expected \`str\` of length <= ${rules.max}`, path);
      if (regex !== null && !regex.test(value))
        throw new ValidationError(`Expected \`str\` matching regex ${rules.shown}`, path);
      return value;
    },
  };
}

/** @param {{ge?: number, le?: number}} [rules] @returns {Type} */
export function int(rules = {}) {
  return {
    check(value, path) {
      // JSON.parse reads `1.0` as 1: archipel's server also takes a whole float for an integer.
      if (typeof value !== 'number' || !Number.isInteger(value)) throw wrongType('int', value, path);
      if (rules.ge !== undefined && value < rules.ge) throw new ValidationError(`Expected \`int\` >= ${rules.ge}`, path);
      if (rules.le !== undefined && value > rules.le) throw new ValidationError(`Expected \`int\` <= ${rules.le}`, path);
      return value;
    },
  };
}

/** @param {Type} item @param {{min?: number}} [rules] @returns {Type} */
export function array(item, rules = {}) {
  return {
    check(value, path) {
      if (!Array.isArray(value)) throw wrongType('array', value, path);
      if (rules.min !== undefined && value.length < rules.min)
        throw new ValidationError(`Expected \`array\` of length >= ${rules.min}`, path);
      return value.map((element, index) => item.check(element, `${path}[${index}]`));
    },
  };
}

/**
 * A struct: fields in declaration order, `[name, type]` or `[name, type, default]`.
 * @param {Array<[string, Type] | [string, Type, unknown]>} fields
 * @returns {Type}
 */
export function struct(fields) {
  const byName = new Map(fields.map((field) => [field[0], field]));
  return {
    check(value, path) {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) throw wrongType('object', value, path);
      /** @type {Record<string, unknown>} */
      const decoded = {};
      for (const [key, raw] of Object.entries(value)) {
        const field = byName.get(key);
        if (field !== undefined) decoded[key] = field[1].check(raw, `${path}.${key}`);
      }
      /** @type {Record<string, unknown>} */
      const result = {};
      for (const field of fields) {
        const [name] = field;
        if (name in decoded) result[name] = decoded[name];
        else if (field.length === 3) result[name] = field[2];
        else throw new ValidationError(`Object missing required field \`${name}\``, path);
      }
      return result;
    },
  };
}

// --- the shop's types ----------------------------------------------------------------------

export const MAX_QUANTITY = 100;
const WHITESPACE =
  '\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff';
/** types.NOT_BLANK: found anywhere, the value is not empty nor only whitespace. */
export const NOT_BLANK = new RegExp(`[^${WHITESPACE}]`, 'u');
const CURRENCIES = ['AUD', 'CAD', 'CHF', 'EUR', 'GBP', 'JPY', 'SEK', 'USD'];

const ProductId = str({ min: 1, max: 64, pattern: '^[^\\u0000]*$', shown: "'^[^\\\\u0000]*$'" });
const Quantity = int({ ge: 1, le: MAX_QUANTITY });
const CurrencyCode = str({ pattern: `^(${CURRENCIES.join('|')})$`, shown: `'^(${CURRENCIES.join('|')})$'` });
const Nanos = int({ ge: -999_999_999, le: 999_999_999 });

export const Money = struct([
  ['currency_code', CurrencyCode],
  ['units', int()],
  ['nanos', Nanos, 0],
]);

export const CartItem = struct([
  ['product_id', ProductId],
  ['quantity', Quantity],
]);

// AddressLine's rule (not blank) is stated in the schema only: shipping's own check enforces it.
export const Address = struct([
  ['street_address', str()],
  ['city', str()],
  ['state', str()],
  ['country', str()],
  ['zip_code', str()],
]);

export const OrderItem = struct([
  ['product_id', str()],
  ['name', str()],
  ['quantity', Quantity],
  ['unit_price', Money],
]);

export const OrderPlaced = struct([
  ['order_id', str()],
  ['user_id', str()],
  ['email', str()],
  ['items', array(OrderItem)],
  ['shipping_cost', Money],
  ['total', Money],
  ['address', Address],
  ['transaction_id', str()],
]);

/** The arguments of each RPC method, by name (archipel's `{Service}_{method}_args` structs). */
export const ARGUMENTS = {
  get_quote: struct([
    ['address', Address],
    ['items', array(CartItem)],
  ]),
  ship_order: struct([
    ['address', Address],
    ['items', array(CartItem, { min: 1 })],
    ['order_id', str(), ''],
  ]),
};

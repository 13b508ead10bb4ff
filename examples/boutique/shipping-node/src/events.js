/**
 * Events over MQTT 5, as archipel's MqttBus and Dispatcher handle them (archipel/_events/mqtt.py,
 * dispatch.py): `OrderPlaced` taken from the shared subscription
 * `$share/{root}.shipping:orders.placed/{root}/orders/placed`, `OrderShipped` published at QoS 1 on
 * `{root}/orders/shipped`, JSON payload, CloudEvents attributes as user properties. An OrderPlaced
 * is acknowledged (PUBACK) only once its OrderShipped, or its dead letter, was acknowledged by the
 * broker: a process that dies mid-way gets it again from its durable session.
 */
import { randomUUID } from 'node:crypto';

import mqtt from 'mqtt';

import { ArchipelError } from './errors.js';
import { log } from './log.js';
import { OrderPlaced, ValidationError } from './schema.js';
import { shipOrder } from './shipping.js';
import { SERVICE_ATTRIBUTE, childTraceparent, wellFormedTraceparent } from './spans.js';

export const SESSION_EXPIRY = 3600; // seconds a durable session outlives its connection
export const MAX_INFLIGHT = 100; // messages handled at once (the broker's window, receive maximum)
const CONNECT_TIMEOUT = 30; // seconds to reach the broker at start
const REDELIVERY_WINDOW = 60; // seconds a transient failure is tried again before dead-lettering
const MAX_PAYLOAD = 1 << 20;
const MAX_ATTRIBUTE = 256;
const MAX_DEAD_PAYLOAD = 64 << 10;
const HANDLER = 'shipping.ship_placed_order';
const EMITTERS = new Set(['checkout']); // the services that declare they emit OrderPlaced
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;
const SOURCE = /^\/([A-Za-z0-9._-]+)\/([A-Za-z0-9._-]+)$/;
// What Python's datetime.fromisoformat reads, with the offset RFC 3339 requires.
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,]\d{1,9})?)?)?(?:Z|[+-]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d{1,6})?)?)?)$/i;

export const TOPIC_PLACED = 'orders/placed';
export const TOPIC_SHIPPED = 'orders/shipped';

/** @param {string} root */
export function sharedFilter(root) {
  return `$share/${root}.shipping:${TOPIC_PLACED.replaceAll('/', '.')}/${root}/${TOPIC_PLACED}`;
}

/** Python's datetime.now(UTC).isoformat(): microseconds and `+00:00`. */
export function isoNow() {
  return new Date().toISOString().replace('Z', '000+00:00');
}

/** @param {unknown} value @param {number} limit */
function clip(value, limit) {
  const text = typeof value === 'string' ? value : String(value);
  return text.length <= limit ? text : `${text.slice(0, limit)}...`;
}

/** @param {string} value */
function validTime(value) {
  const m = RFC3339.exec(value);
  if (m === null) return false;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const days = new Date(Date.UTC(year, month, 0)).getUTCDate();
  return month >= 1 && month <= 12 && day >= 1 && day <= days && Number(m[4]) < 24 && Number(m[5] ?? 0) < 60 && Number(m[6] ?? 0) < 60;
}

/**
 * @typedef {{topic: string, type: string, source: string, id: string, time: string,
 *   traceparent: string | undefined, payload: Buffer}} Envelope
 */

/** Why an envelope must not reach the handler, or null (dispatch.py's Dispatcher._refusal). @param {Envelope} e */
export function refusal(e) {
  if (!e.id) return 'the event has no id';
  for (const [name, value] of /** @type {const} */ ([['id', e.id], ['source', e.source], ['type', e.type], ['time', e.time]])) {
    if (value.length > MAX_ATTRIBUTE) return `attribute ${name}: ${value.length} characters, more than ${MAX_ATTRIBUTE}`;
    if (CONTROL.test(value)) return `attribute ${name}: ${JSON.stringify(clip(value, 80))} holds control characters`;
  }
  if (e.type && e.type !== 'OrderPlaced' && !e.type.endsWith('.OrderPlaced')) {
    return `type '${e.type}' is not OrderPlaced, the event of topic '${e.topic}'`;
  }
  if (e.time && !validTime(e.time)) return `attribute time: '${e.time}' is not an RFC 3339 timestamp`;
  const match = SOURCE.exec(e.source);
  if (match === null || !EMITTERS.has(match[2])) {
    return `source '${e.source}' may not publish on topic '${e.topic}' (its events come from ${[...EMITTERS].sort().join(', ')})`;
  }
  if (e.payload.length > MAX_PAYLOAD) return `payload of ${e.payload.length} bytes exceeds the limit of ${MAX_PAYLOAD}`;
  return null;
}

/** The OrderPlaced in a payload; throws with dispatch's reason. @param {Buffer} payload */
export function decodeOrderPlaced(payload) {
  let value;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch (error) {
    throw new Error(`invalid payload: JSON is malformed: ${/** @type {Error} */ (error).message}`);
  }
  try {
    return /** @type {any} */ (OrderPlaced.check(value, '$'));
  } catch (error) {
    if (error instanceof ValidationError) throw new Error(`invalid payload: ${clip(error.message, 1000)}`);
    throw error;
  }
}

/** The OrderShipped that ships an OrderPlaced (throws InvalidArgument for an unshippable order). @param {any} event */
export function orderShipped(event) {
  const items = event.items.map((/** @type {any} */ i) => ({ product_id: i.product_id, quantity: i.quantity }));
  const tracking = shipOrder({ address: event.address, items, order_id: event.order_id });
  const a = event.address;
  return {
    order_id: event.order_id,
    email: event.email,
    tracking_id: tracking,
    address: { street_address: a.street_address, city: a.city, state: a.state, country: a.country, zip_code: a.zip_code },
  };
}

/** @param {number} attempt */
function backoff(attempt) {
  const ceiling = Math.min(5, 0.1 * 2 ** (attempt - 1));
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

const sleep = (/** @type {number} */ seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

/**
 * Connect, subscribe, and handle OrderPlaced events until stopped.
 * @param {{broker: string, root: string, app: string, clientId: string, durable: boolean,
 *   username?: string, password?: string, drain: number, metrics?: import('./metrics.js').Metrics,
 *   tracer?: import('./spans.js').Tracer}} options
 */
export async function startEvents(options) {
  const { root, app } = options;
  const metrics = options.metrics ?? null;
  const tracer = options.tracer ?? null;
  const filter = sharedFilter(root);
  const client = mqtt.connect(options.broker, {
    protocolVersion: 5,
    clientId: options.clientId,
    clean: !options.durable,
    properties: { sessionExpiryInterval: options.durable ? SESSION_EXPIRY : 0, receiveMaximum: MAX_INFLIGHT },
    username: options.username,
    password: options.password,
    reconnectPeriod: 1000,
    connectTimeout: CONNECT_TIMEOUT * 1000,
    resubscribe: true,
  });
  let accepting = true;
  let generation = 0; // one per connection: an ack is only sent on the connection that delivered
  /** @type {Set<Promise<unknown>>} */
  const handling = new Set();
  /** @type {Map<number, {work: Promise<boolean>, generation: number, topic: string}>} */
  const deferred = new Map();

  // MQTT.js sends the PUBACK of a QoS 1 message as soon as `handleMessage` calls back, and reads
  // no further packet until then. To acknowledge only after the handling (which awaits the
  // broker's PUBACK of OrderShipped, on this same connection), `handleMessage` calls back at once
  // and the PUBACK is held here until the handling is done.
  const send = client._sendPacket.bind(client);
  client._sendPacket = (/** @type {any} */ packet, /** @type {any} */ cb, /** @type {any[]} */ ...rest) => {
    const held = packet.cmd === 'puback' ? deferred.get(packet.messageId) : undefined;
    if (held === undefined) return send(packet, cb, ...rest);
    deferred.delete(packet.messageId);
    if (cb) cb();
    held.work.then((ack) => {
      if (ack && held.generation === generation && client.connected) {
        send(packet);
        metrics?.acked(held.topic);
      } else if (ack) log('WARNING', `could not acknowledge message ${packet.messageId}; the broker will redeliver it`);
    });
    return undefined;
  };
  client.handleMessage = (/** @type {any} */ packet, /** @type {() => void} */ callback) => {
    const topic = String(packet.topic);
    const relative = topic.startsWith(`${root}/`) ? topic.slice(root.length + 1) : topic;
    if (packet.qos === 0) {
      if (accepting) void handle(packet); // nothing to acknowledge
    } else if (packet.qos === 1) {
      if (!accepting) {
        deferred.set(packet.messageId, { work: Promise.resolve(false), generation, topic: relative }); // left unacked
      } else {
        const work = handle(packet);
        handling.add(work);
        work.finally(() => handling.delete(work));
        deferred.set(packet.messageId, { work, generation, topic: relative });
      }
    }
    callback();
  };

  /**
   * Publish `payload` under a PRODUCER span, child of `parent`, whose traceparent the event carries
   * (as archipel's emit); ended once the broker has it.
   * @param {string} topic @param {string} type @param {string | undefined} parent @param {string} payload
   */
  async function publishTraced(topic, type, parent, payload) {
    const span = tracer?.start(`publish ${topic}`, 'producer', parent, {
      'messaging.system': 'mqtt',
      'messaging.operation.type': 'send',
      'messaging.destination.name': topic,
      [SERVICE_ATTRIBUTE]: 'shipping',
    }) ?? null;
    try {
      const id = await publish(topic, type, `/${app}/shipping`, span?.traceparent ?? childTraceparent(parent), payload);
      if (span !== null) span.attributes['messaging.message.id'] = id;
    } catch (error) {
      span?.fail(/** @type {Error} */ (error).name, /** @type {Error} */ (error).message);
      throw error;
    }
    span?.end();
  }

  /** @param {any} packet @returns {Promise<boolean>} whether to acknowledge */
  async function handle(packet) {
    /** @type {Record<string, string | string[]>} */
    const props = packet.properties?.userProperties ?? {};
    const attr = (/** @type {string} */ name) => {
      const value = props[name];
      return Array.isArray(value) ? value[value.length - 1] : value;
    };
    const topic = String(packet.topic);
    /** @type {Envelope} */
    const envelope = {
      topic: topic.startsWith(`${root}/`) ? topic.slice(root.length + 1) : topic,
      type: attr('type') ?? '',
      source: attr('source') ?? '',
      id: attr('id') || randomUUID().replaceAll('-', ''),
      time: attr('time') || isoNow(),
      traceparent: attr('traceparent'),
      payload: Buffer.from(packet.payload ?? []),
    };
    if (envelope.traceparent !== undefined && !wellFormedTraceparent(envelope.traceparent)) envelope.traceparent = undefined;
    try {
      let reason = refusal(envelope);
      let event;
      if (reason === null) {
        try {
          event = decodeOrderPlaced(envelope.payload);
        } catch (error) {
          reason = /** @type {Error} */ (error).message;
        }
      }
      if (reason !== null) {
        log('WARNING', `${HANDLER}: refused ${envelope.topic} event ${clip(envelope.id, 80)}: ${reason}`);
        metrics?.handled('dead');
        return await deadLetter(envelope, reason, 0);
      }
      const giveUpAt = Date.now() + REDELIVERY_WINDOW * 1000;
      for (let attempt = 1; ; attempt += 1) {
        // A span per attempt, each under the publish span the event carries (as EventSpans).
        const span = tracer?.start(HANDLER, 'consumer', envelope.traceparent, {
          'messaging.system': 'mqtt',
          'messaging.operation.type': 'process',
          'messaging.destination.name': TOPIC_PLACED,
          'messaging.consumer.group.name': 'shipping',
          'messaging.message.id': envelope.id,
          [SERVICE_ATTRIBUTE]: 'shipping',
        }) ?? null;
        try {
          const shipped = orderShipped(event);
          await publishTraced(TOPIC_SHIPPED, 'OrderShipped', span?.traceparent ?? envelope.traceparent, JSON.stringify(shipped));
          span?.end();
          metrics?.published(TOPIC_SHIPPED);
          metrics?.handled('ok');
          log('INFO', `shipped order ${clip(event.order_id, 80)}: ${shipped.tracking_id}`);
          return true;
        } catch (error) {
          const name = error instanceof ArchipelError ? error.className : /** @type {Error} */ (error).name;
          span?.fail(error instanceof ArchipelError ? error.kind : name, /** @type {Error} */ (error).message);
          let reason = `${name}: ${/** @type {Error} */ (error).message}`;
          if (error instanceof ArchipelError && error.status >= 400 && error.status < 500 && ![408, 429].includes(error.status)) {
            log('WARNING', `${HANDLER} refused event ${envelope.id}: ${reason}`);
          } else if (Date.now() < giveUpAt && accepting) {
            log('WARNING', `${HANDLER} failed on event ${envelope.id} (attempt ${attempt}): ${reason}`);
            metrics?.handled('retried');
            await sleep(Math.min(backoff(attempt), Math.max(0, (giveUpAt - Date.now()) / 1000)));
            continue;
          } else if (!accepting) {
            return false; // stopping: left unacked, delivered again after the restart
          } else {
            log('ERROR', `${HANDLER} gave up on event ${envelope.id} after ${attempt} attempts: ${reason}`);
            reason = `gave up after ${attempt} attempts in ${REDELIVERY_WINDOW}s: ${reason}`;
          }
          metrics?.handled('dead');
          return await deadLetter(envelope, reason, attempt);
        }
      }
    } catch (error) {
      log('ERROR', `${HANDLER}: ${envelope.topic} event ${clip(envelope.id, 80)} not handled: ${error}`);
      return false;
    }
  }

  /** Publish the dead letter of `e` on `{root}/$dead/{topic}`, until the broker takes it. @param {Envelope} e @param {string} reason @param {number} attempts */
  async function deadLetter(e, reason, attempts) {
    const original = e.payload;
    const truncated = original.length > MAX_DEAD_PAYLOAD;
    const letter = {
      reason,
      topic: e.topic,
      handler: HANDLER,
      event_id: clip(e.id, 4 * MAX_ATTRIBUTE),
      payload: (truncated ? original.subarray(0, MAX_DEAD_PAYLOAD) : original).toString('utf8'),
      attempts,
      event_type: clip(e.type, 4 * MAX_ATTRIBUTE),
      source: clip(e.source, 4 * MAX_ATTRIBUTE),
      time: clip(e.time, 4 * MAX_ATTRIBUTE),
      truncated,
    };
    const match = SOURCE.exec(e.source);
    const source = `${match ? `/${match[1]}` : ''}/shipping`;
    for (let attempt = 1; ; attempt += 1) {
      try {
        await publish(`$dead/${e.topic}`, 'DeadLetter', source, e.traceparent, JSON.stringify(letter));
        return true;
      } catch (error) {
        if (!accepting) return false;
        log('ERROR', `dead letter for ${clip(e.id, 80)} not published (${error}); trying again`);
        await sleep(backoff(attempt));
      }
    }
  }

  /**
   * QoS 1 publish; resolves with the event id on the broker's PUBACK.
   * @param {string} topic @param {string} type @param {string} source @param {string | undefined} traceparent
   * @param {string} payload
   */
  function publish(topic, type, source, traceparent, payload) {
    /** @type {Record<string, string>} */
    const id = randomUUID().replaceAll('-', '');
    const userProperties = { specversion: '1.0', id, source, type, time: isoNow() };
    if (traceparent) userProperties.traceparent = traceparent;
    const properties = { payloadFormatIndicator: true, contentType: 'application/json', userProperties };
    return new Promise((resolve, reject) => {
      client.publish(`${root}/${topic}`, payload, { qos: 1, properties }, (error, packet) => {
        if (error) reject(error);
        else if (packet && /** @type {any} */ (packet).reasonCode >= 0x80) reject(new Error(`publish refused (reason ${/** @type {any} */ (packet).reasonCode})`));
        else resolve(id);
      });
    });
  }

  let ready = false;
  client.on('connect', () => {
    generation += 1;
    // A PUBACK or PUBLISH is a few bytes: with Nagle on, each waited for the broker's delayed
    // ACK (40 ms at the 99th percentile in benchmarks/external_service.py). asyncio turns it off
    // on every TCP connection, so the Python services never had this wait.
    /** @type {any} */ (client.stream)?.setNoDelay?.(true);
    log('INFO', `connected to ${options.broker} as ${options.clientId}`);
  });
  client.on('close', () => {
    generation += 1; // acks held for the lost connection are dropped: the broker redelivers
    if (accepting) log('WARNING', `connection to ${options.broker} lost; reconnecting`);
  });

  // Start: connect (a refused login is final; an unreachable broker is tried for CONNECT_TIMEOUT)
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.end(true);
      reject(new Error(`MQTT broker ${options.broker} not reachable within ${CONNECT_TIMEOUT}s`));
    }, CONNECT_TIMEOUT * 1000);
    const onError = (/** @type {any} */ error) => {
      if (typeof error?.code === 'number') {
        clearTimeout(timer);
        client.end(true);
        reject(new Error(`MQTT broker ${options.broker} refused ${options.username ?? 'an anonymous login'}: ${error.message}`));
      }
    };
    client.on('error', onError);
    client.once('connect', () => {
      clearTimeout(timer);
      client.removeListener('error', onError);
      resolve(undefined);
    });
  });
  client.on('error', (error) => log('WARNING', `MQTT: ${error.message}`));
  const granted = await client.subscribeAsync(filter, { qos: 1 });
  if (granted.some((g) => g.qos > 1)) {
    client.end(true);
    throw new Error(`MQTT broker ${options.broker} refused the subscription ${filter} (reason ${granted[0].qos})`);
  }
  ready = true;
  log('INFO', `subscribed to ${filter}`);

  return {
    connected: () => ready && client.connected,
    /** Hand this replica's share of future events to the others (scale-down). */
    async leave() {
      await client.unsubscribeAsync(filter).catch((error) => log('WARNING', `leaving: could not unsubscribe: ${error.message}`));
    },
    /** Stop taking events, let handlers finish (up to `seconds`), disconnect. @param {number} seconds */
    async stop(seconds) {
      accepting = false;
      ready = false;
      if (handling.size > 0) await Promise.race([Promise.allSettled([...handling]), sleep(seconds)]);
      await new Promise((resolve) => setImmediate(resolve)); // let the held PUBACKs go out
      // Politely (DISCONNECT once the publishes in flight are acknowledged), but not forever.
      const ended = await Promise.race([client.endAsync(false).then(() => true), sleep(seconds).then(() => false)]);
      if (!ended) await client.endAsync(true);
    },
  };
}

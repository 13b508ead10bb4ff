/**
 * The shipping service's process: configuration from the environment, the RPC server, the event
 * consumer, and the process contract of an Archipel worker (SIGTERM drains then exits 0, the
 * process follows its supervisor, one log line per start, stop and error).
 */
import { APP, ConfigError, SERVICE, loadConfig } from './config.js';
import { startEvents } from './events.js';
import { log } from './log.js';
import { createMetrics } from './metrics.js';
import { rpcServer } from './rpc.js';
import { spanProcessors } from './export.js';
import { Tracer } from './spans.js';
import { Verifier } from './tokens.js';

const sleep = (/** @type {number} */ seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

async function main() {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    log('ERROR', `bad configuration: ${error.message}`);
    process.exit(2);
  }
  const verifier = config.authenticate && config.keyring !== null ? new Verifier(config.keyring) : null;
  if (verifier === null) log('WARNING', 'ARCHIPEL_AUTHENTICATE=0: internal methods are open to anyone');

  const metrics = createMetrics({
    process: config.process,
    replica: config.instance,
    version: config.version,
    service: SERVICE,
    handler: 'ship_placed_order',
  });
  const who = { deployment: config.deployment, process: config.process, instance: config.instance };
  const names = config.tracingDisabled ? [] : config.exporters.names;
  const exported = await spanProcessors(names, who, config.exporters.batch);
  const tracer = new Tracer({ process: config.process, enabled: !config.tracingDisabled, ...exported });

  let events = null;
  if (config.broker !== null) {
    const login = config.brokerLogin && config.keyring !== null ? config.keyring : null;
    events = await startEvents({
      broker: config.broker,
      root: config.deployment,
      app: APP,
      clientId: `${config.deployment}-${config.instance}`,
      durable: config.durable,
      username: login?.mqtt_username,
      password: login?.mqtt_password,
      drain: config.drain,
      metrics,
      tracer,
    });
  } else {
    log('WARNING', 'no ARCHIPEL_BROKER: this process takes no events');
  }
  if (config.reusePort) log('WARNING', 'ARCHIPEL_REUSE_PORT=1 is not supported on Node.js 20: listening alone');
  const connected = events === null ? () => true : events.connected;
  const rpc = rpcServer({
    verifier,
    maxBody: config.maxBody,
    version: config.version,
    ready: connected,
    metrics,
    tracer,
    open: config.openEndpoints,
  });
  await new Promise((resolve, reject) => {
    rpc.server.once('error', reject);
    rpc.server.listen(config.port, config.host, () => resolve(undefined));
  });
  const address = rpc.server.address();
  const where = typeof address === 'object' && address !== null ? `${address.address}:${address.port}` : String(address);
  log('INFO', `started ${SERVICE} (version ${config.version || '-'}) on http://${where}`);

  let stopping = false;
  /** @param {string} why @param {boolean} leave */
  const stop = async (why, leave) => {
    if (stopping) return;
    stopping = true;
    log('INFO', `stopping (${why})`);
    rpc.state.draining = true; // /readyz answers 503 from now on
    if (config.drainDelay > 0) await sleep(config.drainDelay);
    await rpc.close(config.drain);
    if (events !== null) {
      if (leave) await events.leave();
      await events.stop(config.drain);
    }
    await tracer.shutdown(config.drain); // the spans still batched, to the collector
    log('INFO', 'stopped');
    process.exit(0);
  };
  const fail = (/** @type {unknown} */ error) => {
    log('ERROR', `stopping on an error: ${error instanceof Error ? error.stack : error}`);
    process.exit(1);
  };
  process.on('SIGTERM', () => stop('SIGTERM', false).catch(fail));
  process.on('SIGINT', () => stop('SIGINT', false).catch(fail));
  process.on('SIGUSR2', () => stop('SIGUSR2: leaving for good', true).catch(fail));
  if (config.supervisorPid > 0) {
    const pid = config.supervisorPid;
    setInterval(() => {
      try {
        process.kill(pid, 0);
      } catch (error) {
        if (/** @type {NodeJS.ErrnoException} */ (error).code === 'ESRCH') stop(`supervisor ${pid} is gone`, false).catch(fail);
      }
    }, 1000).unref();
  }
}

process.on('uncaughtException', (error) => {
  log('ERROR', `uncaught: ${error.stack ?? error}`);
  process.exit(1);
});
main().catch((error) => {
  log('ERROR', `start-up failed: ${error instanceof Error ? error.message : error}`);
  process.exit(1);
});

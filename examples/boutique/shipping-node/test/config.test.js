import assert from 'node:assert/strict';
import { test } from 'node:test';

import { loadConfig } from '../src/config.js';

const KEYRING = JSON.stringify({ verifying: { 'checkout>shipping': ['k'] }, mqtt_username: 'shop.shipping', mqtt_password: 'p' });

test('defaults are archipel worker defaults', () => {
  const c = loadConfig({ ARCHIPEL_KEYRING: KEYRING });
  assert.equal(c.host, '0.0.0.0');
  assert.equal(c.port, 8000);
  assert.equal(c.instance, 'shipping-0');
  assert.equal(c.deployment, 'boutique');
  assert.equal(c.durable, true);
  assert.equal(c.keyring?.mqtt_username, 'shop.shipping');
});

test('bad or missing settings name their variable', () => {
  assert.throws(() => loadConfig({}), /ARCHIPEL_KEYRING/);
  assert.throws(() => loadConfig({ ARCHIPEL_KEYRING: '{' }), /^Error: ARCHIPEL_KEYRING=/);
  assert.throws(() => loadConfig({ ARCHIPEL_KEYRING: KEYRING, ARCHIPEL_PORT: '70000' }), /ARCHIPEL_PORT="70000": expected a port number/);
  assert.throws(() => loadConfig({ ARCHIPEL_AUTHENTICATE: 'maybe' }), /ARCHIPEL_AUTHENTICATE/);
  assert.throws(() => loadConfig({ ARCHIPEL_AUTHENTICATE: '0', ARCHIPEL_BROKER: 'tcp://x' }), /ARCHIPEL_BROKER/);
  assert.throws(() => loadConfig({ ARCHIPEL_AUTHENTICATE: '0', ARCHIPEL_BROKER: 'mqtt://x:1' }), /ARCHIPEL_BROKER_LOGIN=0/);
  assert.throws(() => loadConfig({ ARCHIPEL_AUTHENTICATE: '0', ARCHIPEL_SERVICES: 'cart' }), /ARCHIPEL_SERVICES/);
  assert.throws(() => loadConfig({ ARCHIPEL_KEYRING_FILE: '/nonexistent/keyring.json' }), /ARCHIPEL_KEYRING_FILE: cannot read/);
});

test('ARCHIPEL_AUTHENTICATE=0 needs no keyring; ARCHIPEL_INSTANCE and ARCHIPEL_DURABLE=0 are taken', () => {
  const c = loadConfig({ ARCHIPEL_AUTHENTICATE: '0', ARCHIPEL_INSTANCE: 'shipping-node-1', ARCHIPEL_DURABLE: 'false' });
  assert.equal(c.keyring, null);
  assert.equal(c.instance, 'shipping-node-1');
  assert.equal(c.durable, false);
});

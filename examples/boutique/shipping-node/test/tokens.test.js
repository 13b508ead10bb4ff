import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Verifier, decodeKey, sign } from '../src/tokens.js';

// Vectors from archipel._security: keyring_for(boutique app, "shop", "shipping", ["shipping"],
// [b"test-secret-0123456789abcdef0123"]) and tokens.sign with its checkout>shipping key.
const KEY = 't9uNjClJ4l0suO0qpXH_BfNQilF7h8ilVuLG9cEU1pQ';
const VALID = 'v1.checkout.shipping.2000000000.Zr3ywvAGrAHzWuy2ktQomz_NhNQiyQCmok36saM2eV8';
const FOR_PAYMENT = 'v1.checkout.payment.2000000000.V2W8sz58x_rIojFop5utZTcMCV5VTQhaZ5l7L0_lbEQ';
const EXPIRED = 'v1.checkout.shipping.1000.QgWzgn3aLTNuIemf4aVoRR7Vm2P_9R4hOFKtKNtaXfY';
const NOW = 2000000000 - 60;

const verifier = (now = NOW) => new Verifier({ verifying: { 'checkout>shipping': [KEY] } }, () => now);
const refused = (status, message) => ({ status, message });

test('tokens are signed as archipel signs them', () => {
  assert.equal(sign(decodeKey(KEY), 'checkout', 'shipping', 2000000000), VALID);
  assert.equal(sign(decodeKey(KEY), 'checkout', 'shipping', 1000), EXPIRED);
});

test('a valid token names its caller, again from the cache', () => {
  const v = verifier();
  assert.equal(v.caller(`Bearer ${VALID}`, 'shipping'), 'checkout');
  assert.equal(v.caller(`Bearer ${VALID}`, 'shipping'), 'checkout');
});

test('refusals: 401 for a missing, malformed, forged, expired or misdirected token, 403 for a stranger', () => {
  const v = verifier();
  assert.throws(() => v.caller(undefined, 'shipping'), refused(401, 'calls to shipping need a credential (authorization: Bearer ...)'));
  assert.throws(() => v.caller(`Basic ${VALID}`, 'shipping'), refused(401, "the authorization header must be 'Bearer <token>'"));
  assert.throws(() => v.caller('Bearer a.b.c', 'shipping'), refused(401, 'the credential is malformed'));
  assert.throws(() => v.caller('Bearer v2.a.shipping.1.x', 'shipping'), refused(401, "unknown credential version 'v2'"));
  assert.throws(() => v.caller(`Bearer ${FOR_PAYMENT}`, 'shipping'), refused(401, 'the credential was made for service payment, not shipping'));
  assert.throws(() => v.caller(`Bearer ${VALID.slice(0, -1)}A`, 'shipping'), refused(401, "the credential's signature is not valid"));
  assert.throws(() => v.caller(`Bearer ${EXPIRED}`, 'shipping'), refused(401, 'the credential has expired'));
  assert.throws(() => v.caller(`Bearer ${VALID.replace('checkout', 'ads')}`, 'shipping'), refused(403, 'ads may not call shipping (not one of its declared callers)'));
});

test('a token living longer than 300 s (plus 30 s of skew) is refused; expiry has 30 s of skew', () => {
  assert.throws(() => verifier(2000000000 - 331).caller(`Bearer ${VALID}`, 'shipping'), refused(401, 'the credential claims to live longer than 300s'));
  assert.equal(verifier(2000000000 - 330).caller(`Bearer ${VALID}`, 'shipping'), 'checkout');
  assert.equal(verifier(2000000000 + 30).caller(`Bearer ${VALID}`, 'shipping'), 'checkout');
  assert.throws(() => verifier(2000000000 + 31).caller(`Bearer ${VALID}`, 'shipping'), refused(401, 'the credential has expired'));
});

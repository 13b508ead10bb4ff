"""Call credentials: short-lived tokens signed with the key of one caller -> callee edge.

A token reads ``v1.{caller}.{callee}.{expiry}.{signature}``: the expiry in Unix seconds, the
signature ``HMAC-SHA256(edge key, "v1.{caller}.{callee}.{expiry}")`` in unpadded base64url. It
travels as ``authorization: Bearer <token>``. The edge key is derived from the deployment's
secret and the names of both ends (``keyring``), so a token is good for one callee of one
deployment only: replayed to another service it fails the signature check, and the callee field
makes the refusal say why.

Cheap by design (measured in benchmarks/remote_call.py): a caller signs once per edge and reuses
the token until half its life is gone; a callee checks the HMAC of a token once and then finds it
in a small cache until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

from .._errors import PermissionDenied, Unauthenticated
from .keyring import OPERATOR, Keyring, decode_key, edge

TOKEN_TTL = 60.0  # seconds a token lives: long enough to reuse, short enough that a leak expires
MAX_TTL = 300  # a callee refuses tokens that claim to live longer than this (a leaked key's reach)
CLOCK_SKEW = 30  # seconds of disagreement between hosts' clocks that are tolerated
_CACHE_SIZE = 4096
_PREFIX = b"Bearer "
_VERSION = "v1"

Clock = Callable[[], float]


def sign(key: bytes, caller: str, callee: str, expiry: int) -> str:
    claims = f"{_VERSION}.{caller}.{callee}.{expiry}"
    mac = hmac.new(key, claims.encode(), hashlib.sha256).digest()
    return f"{claims}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


class Signer:
    """Gives the ``authorization`` header of a call from ``caller`` to ``callee``, or None when
    this process holds no key for that edge (the callee then refuses the call: 401)."""

    def __init__(self, keyring: Keyring, *, ttl: float = TOKEN_TTL, clock: Clock = time.time) -> None:
        self._keys = {name: decode_key(keys[0]) for name, keys in keyring.signing.items() if keys}
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # edge -> (header, renew after)

    def header(self, caller: str, callee: str) -> str | None:
        name = edge(caller, callee)
        now = self._clock()
        cached = self._cache.get(name)
        if cached is not None and now < cached[1]:
            return cached[0]
        key = self._keys.get(name)
        if key is None:
            return None
        value = "Bearer " + sign(key, caller, callee, int(now + self._ttl))
        self._cache[name] = (value, now + self._ttl / 2)
        return value


def operator_headers(signer: Signer, service: str) -> dict[str, str]:
    """The operator's ``authorization`` header for ``service`` (``signer`` holds the operator's
    keys); KeyError when the deployment has no such service."""
    header = signer.header(OPERATOR, service)
    if header is None:
        raise KeyError(f"no service {service!r} in this deployment")
    return {"authorization": header}


class Verifier:
    """Checks the credential of a call to one of this process's services and names the caller.

    Raises :class:`Unauthenticated` (401: no credential, malformed, bad signature, expired, or
    made for another service) or :class:`PermissionDenied` (403: a caller this service does not
    accept calls from). Messages say what is wrong, never a key or the token."""

    def __init__(self, keyring: Keyring, *, clock: Clock = time.time) -> None:
        self._keys = {name: [decode_key(k) for k in keys] for name, keys in keyring.verifying.items()}
        self._callees = {name.split(">")[1] for name in self._keys}
        self._scrape = [bytes.fromhex(digest) for digest in keyring.scrape]
        self._clock = clock
        self._seen: dict[bytes, tuple[str, str, int]] = {}  # token -> (caller, callee, expiry)

    def observer(self, authorization: bytes | None) -> None:
        """Let an operator (a token of the operator for one of this process's services) or a
        scraper (the deployment's scrape token) read /metrics and /openapi.json."""
        if authorization and authorization.startswith(_PREFIX):
            token = authorization[len(_PREFIX) :].strip()
            digest = hashlib.sha256(token).digest()
            if any(hmac.compare_digest(digest, known) for known in self._scrape):
                return
            try:
                _, audience, _ = self._seen.get(token) or _parse(token)
                if audience in self._callees and self.caller(authorization, audience) == OPERATOR:
                    return
            except (Unauthenticated, PermissionDenied):
                pass
        raise Unauthenticated("this endpoint needs the scrape token or an operator credential")

    def caller(self, authorization: bytes | None, callee: str) -> str:
        if not authorization:
            raise Unauthenticated(f"calls to {callee} need a credential (authorization: Bearer ...)")
        if not authorization.startswith(_PREFIX):
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        token = authorization[len(_PREFIX) :].strip()
        seen = self._seen.get(token)
        caller, audience, expiry = seen or _parse(token)
        if audience != callee:
            raise Unauthenticated(f"the credential was made for service {audience[:64]}, not {callee}")
        if seen is None:
            self._verify(token, caller, callee, expiry)
        if expiry + CLOCK_SKEW < self._clock():
            self._seen.pop(token, None)
            raise Unauthenticated("the credential has expired")
        return caller

    def _verify(self, token: bytes, caller: str, callee: str, expiry: int) -> None:
        """Check a token seen for the first time, then keep it until it expires."""
        keys = self._keys.get(edge(caller, callee))
        if keys is None:
            raise PermissionDenied(f"{caller[:64]} may not call {callee} (not one of its declared callers)")
        expected = token.decode("ascii")
        if not any(hmac.compare_digest(sign(key, caller, callee, expiry), expected) for key in keys):
            raise Unauthenticated("the credential's signature is not valid")
        if expiry > self._clock() + MAX_TTL + CLOCK_SKEW:
            raise Unauthenticated(f"the credential claims to live longer than {MAX_TTL}s")
        if len(self._seen) >= _CACHE_SIZE:
            self._seen.clear()  # rare: tokens are reused, so the cache holds a few per caller
        self._seen[token] = (caller, callee, expiry)


def _parse(token: bytes) -> tuple[str, str, int]:
    """``(caller, callee, expiry)`` as a token claims them, before any check of its signature."""
    try:
        version, caller, audience, raw_expiry, _ = token.decode("ascii").split(".")
        expiry = int(raw_expiry)
    except (UnicodeDecodeError, ValueError):
        raise Unauthenticated("the credential is malformed") from None
    if version != _VERSION:
        raise Unauthenticated(f"unknown credential version {version[:10]!r}")
    return caller, audience, expiry

"""Call credentials, one layer alone: signing, checking, expiry, rotation, and hostile headers.

The end-to-end proof (real processes, raw HTTP, effects that must not happen) is test_auth.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archipel import PermissionDenied, Unauthenticated
from archipel._security.keyring import OPERATOR, Keyring, edge_key, keyring_for
from archipel._security.secrets import SecretError, load_secrets, mqtt_password
from archipel._security.tokens import CLOCK_SKEW, MAX_TTL, Signer, Verifier, sign
from tests.apps.shop import app

SECRET = b"unit-test-secret-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keyrings(*secrets: bytes) -> tuple[Keyring, Keyring]:
    """(checkout's keyring, currency's keyring) of the test shop."""
    chosen = list(secrets or (SECRET,))
    return (
        keyring_for(app, "testshop", "checkout", ["checkout"], chosen),
        keyring_for(app, "testshop", "currency", ["currency"], chosen),
    )


def test_a_signed_call_names_its_caller_and_the_token_is_reused() -> None:
    clock = Clock()
    checkout, currency = keyrings()
    signer = Signer(checkout, clock=clock)
    header = signer.header("checkout", "currency")
    assert header is not None and header.startswith("Bearer v1.checkout.currency.")
    assert signer.header("checkout", "currency") == header  # cached: signed once per half-life
    clock.now += 31
    assert signer.header("checkout", "currency") != header  # renewed before it expires
    assert Verifier(currency, clock=clock).caller(header.encode(), "currency") == "checkout"


def test_keys_are_per_edge() -> None:
    checkout, currency = keyrings()
    assert set(checkout.signing) == {"checkout>currency"}  # its one dependency
    assert set(currency.verifying) == {"checkout>currency", f"{OPERATOR}>currency"}
    assert Signer(checkout).header("checkout", "ledger") is None  # no key: it cannot even try


@pytest.mark.parametrize(
    ("header", "error", "message"),
    [
        (None, Unauthenticated, "need a credential"),
        (b"Basic abc", Unauthenticated, "must be 'Bearer <token>'"),
        (b"Bearer ", Unauthenticated, "malformed"),
        (b"Bearer v1.checkout.currency.notanumber.sig", Unauthenticated, "malformed"),
        (b"Bearer v2.checkout.currency.1000060.sig", Unauthenticated, "unknown credential version"),
        (b"Bearer v1.checkout.ledger.1000060.sig", Unauthenticated, "made for service ledger"),
        (b"Bearer v1.email.currency.1000060.sig", PermissionDenied, "email may not call currency"),
        (b"Bearer v1.checkout.currency.1000060.c2ln", Unauthenticated, "signature is not valid"),
    ],
)
def test_bad_credentials_are_refused_naming_what_is_wrong(
    header: bytes | None, error: type[Exception], message: str
) -> None:
    _, currency = keyrings()
    with pytest.raises(error, match=message):
        Verifier(currency, clock=Clock()).caller(header, "currency")


def test_expiry_allows_clock_skew_and_caps_the_lifetime() -> None:
    clock = Clock()
    _, currency = keyrings()
    key = edge_key(SECRET, "testshop", "checkout", "currency")

    def check(expiry: float) -> str:
        token = sign(key, "checkout", "currency", int(expiry))
        return Verifier(currency, clock=clock).caller(f"Bearer {token}".encode(), "currency")

    assert check(clock.now - CLOCK_SKEW + 1) == "checkout"
    with pytest.raises(Unauthenticated, match="expired"):
        check(clock.now - CLOCK_SKEW - 1)
    with pytest.raises(Unauthenticated, match="longer than"):
        check(clock.now + MAX_TTL + CLOCK_SKEW + 1)


def test_a_cached_token_still_expires() -> None:
    clock = Clock()
    checkout, currency = keyrings()
    header = Signer(checkout, clock=clock).header("checkout", "currency")
    assert header is not None
    verifier = Verifier(currency, clock=clock)
    assert verifier.caller(header.encode(), "currency") == "checkout"
    clock.now += 60 + CLOCK_SKEW + 1
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.caller(header.encode(), "currency")


def test_during_a_rotation_both_secrets_verify_and_the_new_one_signs() -> None:
    new, old = b"the-new-secret-0123456789abcdef", b"the-old-secret-0123456789abcdef"
    _, currency = keyrings(new, old)
    verifier = Verifier(currency)
    for secret in (new, old):
        signer = Signer(keyring_for(app, "testshop", "checkout", ["checkout"], [secret]))
        header = signer.header("checkout", "currency")
        assert header is not None and verifier.caller(header.encode(), "currency") == "checkout"
    rotated, _ = keyrings(new, old)
    assert Signer(rotated).header("checkout", "currency") == Signer(
        keyring_for(app, "testshop", "checkout", ["checkout"], [new])
    ).header("checkout", "currency")


def test_deployments_sharing_a_secret_do_not_accept_each_others_calls() -> None:
    other = keyring_for(app, "testshop-staging", "checkout", ["checkout"], [SECRET])
    _, currency = keyrings()
    header = Signer(other).header("checkout", "currency")
    assert header is not None
    with pytest.raises(Unauthenticated, match="signature"):
        Verifier(currency).caller(header.encode(), "currency")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_header_is_refused_with_a_declared_error_never_a_crash(header: bytes) -> None:
    _, currency = keyrings()
    verifier = Verifier(currency)
    for value in (header, b"Bearer " + header, b"Bearer v1.checkout.currency." + header):
        with pytest.raises((Unauthenticated, PermissionDenied)):
            verifier.caller(value, "currency")
    with pytest.raises(Unauthenticated):
        verifier.observer(b"Bearer " + header)


def test_secrets_from_the_environment() -> None:
    assert load_secrets({}) is None
    assert load_secrets({"ARCHIPEL_SECRET": "a" * 16 + ", " + "b" * 20}) == [b"a" * 16, b"b" * 20]
    with pytest.raises(SecretError, match="secret #1 has 5 characters") as caught:
        load_secrets({"ARCHIPEL_SECRET": "short"})
    assert "short" not in str(caught.value)  # never the value itself
    with pytest.raises(SecretError, match="cannot read it"):
        load_secrets({"ARCHIPEL_SECRET_FILE": "/nonexistent/secret"})


def test_secret_file_holds_one_secret_a_line(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first-secret-0123456789\nsecond-secret-0123456789\n")
    assert load_secrets({"ARCHIPEL_SECRET_FILE": str(path)}) == [
        b"first-secret-0123456789",
        b"second-secret-0123456789",
    ]


def test_a_keyring_never_shows_its_keys() -> None:
    checkout, _ = keyrings()
    assert "checkout>currency" not in repr(checkout) and checkout.mqtt_password not in repr(checkout)
    assert checkout.mqtt_password == mqtt_password(SECRET, "testshop.checkout")

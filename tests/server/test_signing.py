"""Ed25519 through libsodium (the server's fast path) agrees with OpenSSL byte for byte."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server import signing
from server.signing import SignatureError, b64e, make_token, sign, verify_signature, verify_token


def test_libsodium_is_the_servers_ed25519() -> None:
    assert signing._sodium is not None, "PyNaCl is a server dependency: the hot path verifies with libsodium"


@pytest.mark.parametrize("message", [b"", b"x", b"POST\n/v1/transactions/authorize\n" + b"a" * 300])
def test_signatures_match_openssl_and_verify_both_ways(message: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    assert sign(key, message) == key.sign(message)  # Ed25519 is deterministic
    verify_signature(key.public_key(), message, b64e(key.sign(message)))
    key.public_key().verify(sign(key, message), message)


def test_a_tampered_truncated_or_foreign_signature_is_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sig = bytearray(sign(key, b"amount=42.00"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(key.public_key(), b"amount=42.01", b64e(bytes(sig)))
    sig[5] ^= 1
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(key.public_key(), b"amount=42.00", b64e(bytes(sig)))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(key.public_key(), b"amount=42.00", b64e(bytes(sig[:63])))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(other.public_key(), b"amount=42.00", b64e(sign(key, b"amount=42.00")))


def test_tokens_from_two_keys_do_not_cross_verify() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = make_token(a, {"amount": "42.00", "payee": "X"})
    assert verify_token(a.public_key(), token)["payee"] == "X"
    with pytest.raises(SignatureError):
        verify_token(b.public_key(), token)
    assert make_token(b, {"amount": "42.00", "payee": "X"}) != token  # each key's own cached secret


def test_a_signature_has_one_spelling() -> None:
    """Python's decoder skips junk and takes padding and `+/`: each of these verified before."""
    key = Ed25519PrivateKey.generate()
    good = b64e(sign(key, b"m"))
    verify_signature(key.public_key(), b"m", good)
    std = good.replace("-", "+").replace("_", "/")
    spellings = [good[:20] + "$$$$" + good[20:], good + "==", good[:20] + " " + good[20:]]
    spellings += [std] if std != good else []
    for text in spellings:
        with pytest.raises(SignatureError, match="base64url"):  # not valid, or not the one spelling
            verify_signature(key.public_key(), b"m", text)


def test_a_public_key_has_one_spelling_and_operator_seeds_may_be_padded() -> None:
    import base64

    from server.signing import b64d, load_public_key, public_key_b64

    key = Ed25519PrivateKey.generate()
    text = public_key_b64(key)
    assert load_public_key(text).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(SignatureError, match="public_key: not unpadded base64url"):
        load_public_key(text + "=")
    seed = base64.urlsafe_b64encode(bytes(range(32))).decode()  # what docs/api.md's one-liner prints
    assert seed.endswith("=") and b64d(seed, field="server_signing_key", canonical=False) == bytes(range(32))

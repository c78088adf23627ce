"""JWT material for the end-to-end tests: an RSA key and its JWKS, and tokens good and bad.

PyJWT signs the well-formed tokens; the hostile ones (``alg: none``, HS256 keyed with the RSA
public key PEM) are assembled by hand because PyJWT refuses to make them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://issuer.test"
AUDIENCE = "apigate-tests"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The public key as PEM: what an algorithm-confusion attacker uses as an HMAC secret."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    """A JWKS holding the public half of ``key`` under ``kid`` for RS256."""
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims that a gateway with ISSUER and AUDIENCE accepts, valid for an hour."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now,
                            "exp": now + 3600}
    return {**base, **overrides}


def hs256(secret: str | bytes, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def rs256(key: rsa.RSAPrivateKey, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_part(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def unsigned(**overrides: Any) -> str:
    """An ``alg: none`` token with an empty signature."""
    return f"{_json_part({'alg': 'none', 'typ': 'JWT'})}.{_json_part(claims(**overrides))}."


def hmac_signed(secret: bytes, header: dict[str, Any], **overrides: Any) -> str:
    """An HS256 token over ``header`` signed with ``secret`` however PyJWT feels about it."""
    signing_input = f"{_json_part(header)}.{_json_part(claims(**overrides))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"

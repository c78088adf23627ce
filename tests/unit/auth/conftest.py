"""Keys, configs and a settable clock for the auth unit tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from apigate.auth import Authenticator, ConsumerDirectory
from apigate.config.model import Config

NOW = 1_800_000_000.0
SECRET = "k" * 64  # long enough for HS512 (RFC 7518 section 3.2)


class FakeClock:
    """A clock the test sets; called like time.time()."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class KeyPair:
    private: Any
    jwk: dict[str, Any]


def _jwk(public: Any, algorithm: Any, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(public))
    jwk["kid"] = kid
    return jwk


@pytest.fixture(scope="session")
def rsa_keys() -> list[KeyPair]:
    """Two RSA-2048 key pairs, kids rsa-1 and rsa-2."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    return [KeyPair(k, _jwk(k.public_key(), RSAAlgorithm, f"rsa-{i + 1}"))
            for i, k in enumerate(keys)]


@pytest.fixture(scope="session")
def ec_key() -> KeyPair:
    """A P-256 key pair, kid ec-1."""
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(key, _jwk(key.public_key(), ECAlgorithm, "ec-1"))


@pytest.fixture(scope="session")
def ed_key() -> KeyPair:
    """An Ed25519 key pair, kid ed-1."""
    key = ed25519.Ed25519PrivateKey.generate()
    return KeyPair(key, _jwk(key.public_key(), OKPAlgorithm, "ed-1"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a Config with one route per auth mode; ``jwks`` is written to a file."""

    def build(*, jwt: dict[str, Any] | None = None, jwks: list[dict[str, Any]] | None = None,
              api_key: dict[str, Any] | None = None, consumers: dict[str, Any] | None = None,
              route_consumers: list[str] | None = None) -> Config:
        jwt_cfg = dict(jwt or {})
        if jwks is not None:
            path = tmp_path / "jwks.json"
            path.write_text(json.dumps({"keys": jwks}))
            jwt_cfg["jwks_file"] = str(path)
        data: dict[str, Any] = {
            "upstreams": {"up": {"targets": ["http://127.0.0.1:9"]}},
            "routes": [
                {"name": "open", "upstream": "up"},
                {"name": "keyed", "upstream": "up", "auth": "api_key",
                 "consumers": route_consumers},
                {"name": "bearer", "upstream": "up", "auth": "jwt", "consumers": route_consumers},
            ],
            "rate_limits": {
                "per-consumer": {"limit": 10, "window": "1m", "key": "consumer"},
                "per-ip": {"limit": 10, "window": "1s"},
            },
            "consumers": consumers or {},
            "auth": {"api_key": api_key or {"header": "X-API-Key"}},
        }
        if jwt_cfg:
            data["auth"]["jwt"] = {"issuer": "https://issuer.test", "audience": "apigate",
                                   "leeway_s": 30, **jwt_cfg}
        return Config.model_validate(data)

    return build


@pytest.fixture
def make_auth(clock: FakeClock) -> Callable[..., Authenticator]:
    """An Authenticator over a memory:// directory, on the fake clock."""

    def build(config: Config, **kwargs: Any) -> Authenticator:
        return Authenticator(config, ConsumerDirectory.from_config(config), clock=clock,
                             **kwargs)

    return build



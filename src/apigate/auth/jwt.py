"""JWT bearer tokens: PyJWT with an explicit algorithm allow-list, keys from a secret or JWKS.

Every way a token can be wrong ends in :class:`TokenRejected` (the caller answers 401), never
in another exception: tokens are attacker input. Verified tokens are cached (bounded LRU,
keyed by the SHA-256 of the whole token) until they expire, so a client repeating its token
costs one RSA/EC verification, not one per request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

import jwt as pyjwt
from jwt import PyJWK

from apigate.auth.jwks import Fetch, JwksUrlSource, KeySet
from apigate.config.loader import ConfigError
from apigate.config.model import JwtAuth

MAX_TOKEN_BYTES = 16384
CACHE_SIZE = 10_000
# RFC 7518 section 3.2: an HMAC key must be at least as long as the hash output.
_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


class TokenRejected(Exception):
    """The token cannot be trusted; ``reason`` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Verified:
    claims: Mapping[str, Any]
    valid_until: float  # epoch seconds: exp + leeway, or earlier (see JwtVerifier._remember)


class JwtVerifier:
    """Verifies bearer tokens against one ``auth.jwt`` config snapshot.

    ``clock`` (epoch seconds) decides ``exp``/``nbf`` and cache expiry; tests inject it.
    """

    def __init__(self, cfg: JwtAuth, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, fetch: Fetch | None = None,
                 cache_size: int = CACHE_SIZE) -> None:
        self._cfg = cfg
        self._algorithms = tuple(cfg.algorithms)
        self._clock = clock
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._cache_size = cache_size
        self._secret = _checked_secret(cfg) if cfg.secret else None
        self._static_keys = _read_jwks_file(cfg) if cfg.jwks_file else None
        self._url_source = (
            JwksUrlSource(cfg.jwks_url, self._algorithms, cache_s=cfg.jwks_cache_s,
                          min_refresh_s=cfg.jwks_min_refresh_s, fetch=fetch,
                          monotonic=monotonic)
            if cfg.jwks_url else None
        )

    async def start(self) -> None:
        """Fetch ``jwks_url`` once so the first request does not wait (failure is logged)."""
        if self._url_source is not None:
            await self._url_source.prime()

    async def aclose(self) -> None:
        if self._url_source is not None:
            await self._url_source.aclose()

    async def verify(self, token: str) -> Mapping[str, Any]:
        """The verified claims of ``token``; raises TokenRejected for anything else."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("token too large")
        if token.count(".") != 2 or not token.isascii():  # base64url parts and dots only
            raise TokenRejected("malformed token")
        fingerprint = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        hit = self._cache.get(fingerprint)
        if hit is not None:
            if now < hit.valid_until:
                self._cache.move_to_end(fingerprint)
                return hit.claims
            del self._cache[fingerprint]
        claims = await self._verify_uncached(token, now)
        return self._remember(fingerprint, claims, now)

    @property
    def consumer_claim(self) -> str:
        """The claim that names the consumer; ``verify`` guarantees it is a non-empty string."""
        return self._cfg.consumer_claim

    def cached_tokens(self) -> int:
        """How many verified tokens are cached (for tests and metrics)."""
        return len(self._cache)

    async def _verify_uncached(self, token: str, now: float) -> dict[str, Any]:
        try:
            header = pyjwt.get_unverified_header(token)
        except (pyjwt.PyJWTError, ValueError, TypeError):
            raise TokenRejected("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms:  # also refuses "none" and HS* next to public keys
            raise TokenRejected("algorithm not allowed")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed token")
        key = await self._key_for(kid, alg)
        claims = self._decode(token, key, alg)
        self._check_times(claims, now)
        subject = claims.get(self._cfg.consumer_claim)
        if not isinstance(subject, str) or not subject:
            raise TokenRejected(f"no {self._cfg.consumer_claim} claim")
        if not subject.isprintable():  # it becomes x-consumer upstream: no CR, LF or controls
            raise TokenRejected(f"bad {self._cfg.consumer_claim} claim")
        return claims

    async def _key_for(self, kid: str | None, alg: str) -> PyJWK | bytes:
        if self._secret is not None:
            return self._secret
        key: PyJWK | None = None
        if self._static_keys is not None:
            key = self._static_keys.key_for(kid, alg)
        elif self._url_source is not None:
            key = await self._url_source.key_for(kid, alg)
        if key is None:
            raise TokenRejected("unknown signing key")
        return key

    def _decode(self, token: str, key: PyJWK | bytes, alg: str) -> dict[str, Any]:
        cfg = self._cfg
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token, key, algorithms=[alg], audience=cfg.audience, issuer=cfg.issuer,
                options={
                    "verify_exp": False, "verify_nbf": False, "verify_iat": False,  # see below
                    "verify_aud": cfg.audience is not None,
                    "verify_iss": cfg.issuer is not None,
                    "require": ["exp"],
                    "enforce_minimum_key_length": True,
                },
            )
        except pyjwt.PyJWTError as exc:
            raise TokenRejected(_reason(exc)) from None
        except Exception:  # cryptography on attacker bytes: any failure is just a bad token
            raise TokenRejected("invalid token") from None
        return claims

    def _check_times(self, claims: Mapping[str, Any], now: float) -> None:
        # Checked here, not by PyJWT, so that one injected clock drives validity and the cache.
        leeway = self._cfg.leeway_s
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _is_number(exp):
            raise TokenRejected("exp must be a number")
        if now >= exp + leeway:
            raise TokenRejected("token expired")
        if nbf is not None and not _is_number(nbf):
            raise TokenRejected("nbf must be a number")
        if nbf is not None and nbf > now + leeway:
            raise TokenRejected("token not yet valid")

    def _remember(self, fingerprint: bytes, claims: Mapping[str, Any],
                  now: float) -> Mapping[str, Any]:
        valid_until = float(claims["exp"]) + self._cfg.leeway_s
        if self._url_source is not None:
            # A key removed from the JWKS stops working within one cache period.
            valid_until = min(valid_until, now + self._cfg.jwks_cache_s)
        # Read-only: the cached claims are shared by every request that repeats the token.
        frozen = MappingProxyType(dict(claims))
        self._cache[fingerprint] = _Verified(frozen, valid_until)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return frozen


def _is_number(value: object) -> TypeGuard[float]:
    """A finite JSON number: Python's json accepts NaN and Infinity, which never expire."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _reason(exc: pyjwt.PyJWTError) -> str:
    reasons: list[tuple[type[Exception], str]] = [
        (pyjwt.InvalidSignatureError, "bad signature"),
        (pyjwt.InvalidAudienceError, "wrong audience"),
        (pyjwt.InvalidIssuerError, "wrong issuer"),
        (pyjwt.MissingRequiredClaimError, "missing exp claim"),
        (pyjwt.InvalidAlgorithmError, "algorithm not allowed"),
        (pyjwt.DecodeError, "malformed token"),
    ]
    return next((text for kind, text in reasons if isinstance(exc, kind)), "invalid token")


def key_problems(cfg: JwtAuth) -> list[tuple[str, str]]:
    """What is wrong with the configured secret or JWKS file, for config validation: a key
    the gateway could not use is refused when the file is loaded, not when it is applied."""
    problems: list[tuple[str, str]] = []
    checks = ((_checked_secret, cfg.secret), (_read_jwks_file, cfg.jwks_file))
    for check, configured in checks:
        if configured:
            try:
                check(cfg)
            except ConfigError as exc:
                problems += exc.problems
    return problems


def _checked_secret(cfg: JwtAuth) -> bytes:
    secret = (cfg.secret or "").encode("utf-8")
    need = max(_MIN_SECRET_BYTES[a] for a in cfg.algorithms)
    if len(secret) < need:
        raise ConfigError("config", [(
            "auth.jwt.secret",
            f"{len(secret)} bytes is too short for {', '.join(cfg.algorithms)}: "
            f"use at least {need} random bytes (RFC 7518 section 3.2)",
        )])
    return secret


def _read_jwks_file(cfg: JwtAuth) -> KeySet:
    """Read when the authenticator is built (and once by config validation), never on the
    request path."""
    path = cfg.jwks_file or ""
    try:
        keys = KeySet.parse(Path(path).read_bytes(), cfg.algorithms)
    except (OSError, ValueError) as exc:
        raise ConfigError("config", [("auth.jwt.jwks_file", f"cannot use {path!r}: {exc}")]
                          ) from None
    if not len(keys):
        raise ConfigError("config", [("auth.jwt.jwks_file", f"{path!r} has no key usable with "
                                      f"{', '.join(cfg.algorithms)}")])
    return keys


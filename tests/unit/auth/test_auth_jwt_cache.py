"""The verified-token cache: repeat tokens skip verification, entries expire, size is bounded."""

from __future__ import annotations

import json
from typing import Any

import jwt as pyjwt
import pytest

from apigate.auth.jwt import JwtVerifier, TokenRejected
from apigate.config.model import JwtAuth

NOW = 1_800_000_000
SECRET = "k" * 64


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT actually verifies (a cache hit verifies nothing)."""
    seen: list[str] = []
    real = pyjwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(pyjwt, "decode", counting)
    return seen


def hs_token(**extra: Any) -> str:
    return pyjwt.encode({"sub": "acme", "exp": NOW + 60, **extra}, SECRET, algorithm="HS256")


def verifier(clock: Any, **kwargs: Any) -> JwtVerifier:
    return JwtVerifier(JwtAuth(algorithms=("HS256",), secret=SECRET, leeway_s=5), clock=clock,
                       **kwargs)


async def test_repeat_token_is_verified_once(clock: Any, decodes: list[str]) -> None:
    """The second use of a token is answered from the cache without a signature check."""
    check = verifier(clock)
    token = hs_token()
    first = await check.verify(token)
    second = await check.verify(token)
    assert first == second
    assert decodes == [token]


async def test_cached_token_expires_with_exp(clock: Any, decodes: list[str]) -> None:
    """A cached token stops being accepted once exp + leeway has passed, and leaves the cache."""
    check = verifier(clock)
    token = hs_token()
    await check.verify(token)
    clock.now = NOW + 64
    await check.verify(token)
    assert len(decodes) == 1
    clock.now = NOW + 65
    with pytest.raises(TokenRejected, match="expired"):
        await check.verify(token)
    assert check.cached_tokens() == 0


async def test_cache_is_a_bounded_lru(clock: Any, decodes: list[str]) -> None:
    """Past cache_size the least recently used token is evicted and must verify again."""
    check = verifier(clock, cache_size=3)
    t1, t2, t3, t4 = (hs_token(jti=str(i)) for i in range(4))
    for token in (t1, t2, t3, t1, t4):  # t1 is used again, so t2 is the oldest
        await check.verify(token)
    assert check.cached_tokens() == 3
    decodes.clear()
    await check.verify(t1)
    await check.verify(t2)
    assert decodes == [t2]


async def test_rejected_tokens_are_not_cached(clock: Any, decodes: list[str]) -> None:
    """A token that failed is verified again each time (nothing negative is cached)."""
    check = verifier(clock)
    token = hs_token(exp=NOW - 60)
    for _ in range(2):
        with pytest.raises(TokenRejected):
            await check.verify(token)
    assert check.cached_tokens() == 0
    assert len(decodes) == 2


async def test_jwks_url_cache_entries_live_at_most_jwks_cache_s(
    clock: Any, decodes: list[str], rsa_keys: Any,
) -> None:
    """With jwks_url a cached token is re-verified after jwks_cache_s, so key removal bites."""
    document = json.dumps({"keys": [rsa_keys[0].jwk]}).encode()

    async def fetch(url: str) -> bytes:
        return document

    cfg = JwtAuth(algorithms=("RS256",), jwks_url="http://127.0.0.1:1/jwks", jwks_cache_s=60)
    check = JwtVerifier(cfg, clock=clock, fetch=fetch)
    token = pyjwt.encode({"sub": "acme", "exp": NOW + 3600}, rsa_keys[0].private,
                         algorithm="RS256", headers={"kid": "rsa-1"})
    await check.verify(token)
    clock.now = NOW + 59
    await check.verify(token)
    clock.now = NOW + 61
    await check.verify(token)
    assert len(decodes) == 2
    await check.aclose()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_exp_is_rejected(clock: Any, value: str) -> None:
    """An exp of NaN or Infinity (which Python's json accepts) is refused, never cached forever."""
    header = {"alg": "HS256", "typ": "JWT"}
    body = json.dumps({"sub": "acme"})[:-1] + f', "exp": {value}}}'
    token = pyjwt.api_jws.encode(body.encode(), SECRET, algorithm="HS256", headers=header)
    with pytest.raises(TokenRejected, match="exp must be a number"):
        await verifier(clock).verify(token)

"""JWT bearer tokens through running gateways (HS256 with a secret, RS256 with a JWKS file):
good tokens reach the upstream as X-Consumer = sub without Authorization; every bad token is a
JSON 401 (a head over max_header_bytes a 431), never a 500, and nothing is forwarded."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.integration.auth_gateway import tokens
from tests.integration.auth_gateway.helpers import (
    assert_refused,
    header_values,
    only_request,
    quiet_config,
    route,
    send,
)
from tests.support.gateway import Gateway, running_gateway
from tests.support.upstreams import ScriptedUpstream, UpstreamLoop

SECRET = secrets.token_hex(32)  # 64 bytes
KID = "key-1"


@dataclass
class JwtSetup:
    hs: Gateway
    rs: Gateway
    rsa_key: rsa.RSAPrivateKey
    upstream: ScriptedUpstream


def _jwt_config(upstream: ScriptedUpstream, jwt_section: dict[str, object]) -> dict[str, object]:
    return quiet_config(
        {"up": upstream.url},
        [route("jwt", "/jwt", "up", auth="jwt"),
         route("jwt-fwd", "/fwd", "up", auth="jwt", forward_credentials=True)],
        auth={"jwt": {"issuer": tokens.ISSUER, "audience": tokens.AUDIENCE, "leeway_s": 5,
                      **jwt_section}},
    )


@pytest.fixture(scope="module")
def setup(auth_upstreams: UpstreamLoop,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtSetup]:
    upstream = auth_upstreams.serve("jwt")
    workdir = tmp_path_factory.mktemp("jwt")
    key = tokens.rsa_key()
    jwks_path = workdir / "jwks.json"
    jwks_path.write_text(json.dumps(tokens.jwks(key, KID)))
    hs_config = _jwt_config(upstream, {"algorithms": ["HS256"], "secret": SECRET})
    rs_config = _jwt_config(upstream, {"algorithms": ["RS256"], "jwks_file": str(jwks_path)})
    with running_gateway(hs_config, workdir) as hs, running_gateway(rs_config, workdir) as rs:
        yield JwtSetup(hs, rs, key, upstream)


@pytest.fixture(autouse=True)
def _clear(setup: JwtSetup) -> None:
    setup.upstream.requests.clear()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


@pytest.mark.parametrize("which", ["hs", "rs"])
def test_good_token_sets_consumer_and_strips_authorization(setup: JwtSetup, which: str) -> None:
    """A valid token is 200; the upstream sees X-Consumer = sub and no Authorization header."""
    if which == "hs":
        gateway, token = setup.hs, tokens.hs256(SECRET, sub="alice")
    else:
        gateway, token = setup.rs, tokens.rs256(setup.rsa_key, KID, sub="alice")
    headers = [*bearer(token), ("X-Consumer", "evil")]
    response = send(gateway.port, "/jwt/x", headers)
    assert response.status == 200, response.body
    seen = only_request(setup.upstream)
    assert header_values(seen, "x-consumer") == ["alice"]
    assert "authorization" not in seen.names()


def test_forward_credentials_passes_authorization(setup: JwtSetup) -> None:
    """With forward_credentials the upstream receives the Authorization header unchanged."""
    token = tokens.hs256(SECRET, sub="bob")
    assert send(setup.hs.port, "/fwd/x", bearer(token)).status == 200
    seen = only_request(setup.upstream)
    assert header_values(seen, "authorization") == [f"Bearer {token}"]
    assert header_values(seen, "x-consumer") == ["bob"]


HOUR = 3600

# Each case: the gateway ("hs" / "rs") and a token maker taking the RSA key.
BadToken = Callable[[rsa.RSAPrivateKey], str]
BAD_TOKENS: dict[str, tuple[str, BadToken]] = {
    "hs-alg-none": ("hs", lambda _: tokens.unsigned()),
    "rs-alg-none": ("rs", lambda _: tokens.unsigned()),
    "rs-alg-confusion": ("rs", lambda key: tokens.hmac_signed(
        tokens.public_pem(key), {"alg": "HS256", "typ": "JWT", "kid": KID})),
    "rs-alg-confusion-no-kid": ("rs", lambda key: tokens.hmac_signed(
        tokens.public_pem(key), {"alg": "HS256", "typ": "JWT"})),
    "hs-expired": ("hs", lambda _: tokens.hs256(SECRET, exp=int(time.time()) - HOUR)),
    "rs-expired": ("rs", lambda key: tokens.rs256(key, KID, exp=int(time.time()) - HOUR)),
    "hs-nbf-future": ("hs", lambda _: tokens.hs256(SECRET, nbf=int(time.time()) + HOUR)),
    "rs-nbf-future": ("rs", lambda key: tokens.rs256(key, KID, nbf=int(time.time()) + HOUR)),
    "hs-no-exp": ("hs", lambda _: tokens.hs256(SECRET, exp=None)),
    "hs-wrong-aud": ("hs", lambda _: tokens.hs256(SECRET, aud="someone-else")),
    "rs-wrong-aud": ("rs", lambda key: tokens.rs256(key, KID, aud="someone-else")),
    "hs-wrong-iss": ("hs", lambda _: tokens.hs256(SECRET, iss="https://evil.test")),
    "rs-wrong-iss": ("rs", lambda key: tokens.rs256(key, KID, iss="https://evil.test")),
    "hs-bad-signature": ("hs", lambda _: tokens.hs256(secrets.token_hex(32))),
    "rs-bad-signature": ("rs", lambda _: tokens.rs256(tokens.rsa_key(), KID)),
    "rs-unknown-kid": ("rs", lambda key: tokens.rs256(key, "no-such-kid")),
    "hs-two-parts": ("hs", lambda _: tokens.hs256(SECRET).rsplit(".", 1)[0]),
    "hs-four-parts": ("hs", lambda _: tokens.hs256(SECRET) + ".x"),
    "hs-one-part": ("hs", lambda _: "not-a-jwt"),
    "hs-garbage-parts": ("hs", lambda _: "!!!.@@@.###"),
    "rs-header-not-json": ("rs", lambda _: "bm90LWpzb24.e30.c2ln"),
    "hs-empty-sub": ("hs", lambda _: tokens.hs256(SECRET, sub="")),
    "hs-numeric-sub": ("hs", lambda _: tokens.hs256(SECRET, sub=12345)),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_is_401_json(setup: JwtSetup, case: str) -> None:
    """Each kind of bad token is a JSON 401 with a Bearer challenge, never a 500 or a forward."""
    which, make = BAD_TOKENS[case]
    gateway = setup.hs if which == "hs" else setup.rs
    response = send(gateway.port, "/jwt/x", bearer(make(setup.rsa_key)))
    assert_refused(response)
    assert (response.header("www-authenticate") or "").startswith("Bearer")
    assert setup.upstream.requests == []


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "Basic YWxpY2U6cHc=",
                                   "Token abc.def.ghi"])
def test_missing_or_non_bearer_authorization_is_401(setup: JwtSetup, value: str) -> None:
    """No bearer token (absent, empty, another scheme) is a JSON 401 with a Bearer challenge."""
    headers = [("Authorization", value)] if value else []
    response = send(setup.rs.port, "/jwt/x", headers)
    assert_refused(response)
    assert (response.header("www-authenticate") or "").startswith("Bearer")
    assert setup.upstream.requests == []


@pytest.mark.parametrize("which", ["hs", "rs"])
def test_token_over_max_header_bytes_is_431(setup: JwtSetup, which: str) -> None:
    """A token larger than max_header_bytes is a JSON 431 (not a 500) and is not forwarded."""
    gateway = setup.hs if which == "hs" else setup.rs
    huge = "a" * 20_000 + "." + "b" * 20_000 + "." + "c" * 100
    assert_refused(send(gateway.port, "/jwt/x", bearer(huge)), 431)
    assert setup.upstream.requests == []


def test_token_just_under_max_header_bytes_is_401(setup: JwtSetup) -> None:
    """A large token that fits in the head is verified and refused with 401, not a 500."""
    big = tokens.hs256(SECRET, pad="x" * 12_000)[:-4] + "AAAA"
    assert_refused(send(setup.hs.port, "/jwt/x", bearer(big)))
    assert setup.upstream.requests == []

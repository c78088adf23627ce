"""JWT authentication: good tokens per algorithm, every bad input a 401 with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from apigate.auth import Authenticator, AuthError
from apigate.config.model import Config

NOW = 1_800_000_000
SECRET = "k" * 64


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"sub": "acme", "iss": "https://issuer.test", "aud": "apigate",
            "exp": NOW + 600, "iat": NOW}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed_hs256(payload: dict[str, Any], secret: bytes, **header: Any) -> str:
    """An HS256 token signed without PyJWT (which refuses PEM secrets, as it should)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def call(auth: Authenticator, config: Config, headers: dict[str, str]) -> Any:
    return await auth.authenticate(config.routes[2], headers, "", "192.0.2.1")


@pytest.fixture
def hs_config(make_config: Callable[..., Config]) -> Config:
    return make_config(jwt={"algorithms": ["HS256"], "secret": SECRET})


@pytest.fixture
def rs_config(make_config: Callable[..., Config], rsa_keys: Any) -> Config:
    return make_config(jwt={"algorithms": ["RS256"]}, jwks=[rsa_keys[0].jwk])


async def test_hs256_token_names_the_consumer(hs_config: Config, make_auth: Any) -> None:
    """A valid HS256 token yields a Caller with the sub claim as consumer and the claims."""
    token = pyjwt.encode(claims(), SECRET, algorithm="HS256")
    caller = await call(make_auth(hs_config), hs_config, bearer(token))
    assert caller.consumer == "acme"
    assert caller.claims["iss"] == "https://issuer.test"
    assert caller.client_ip == "192.0.2.1"


@pytest.mark.parametrize(("alg", "fixture"), [("RS256", "rsa_keys"), ("ES256", "ec_key"),
                                              ("EdDSA", "ed_key")])
async def test_public_key_tokens_verify_from_jwks_file(
    alg: str, fixture: str, request: pytest.FixtureRequest,
    make_config: Callable[..., Config], make_auth: Any,
) -> None:
    """RS256, ES256 and EdDSA tokens verify against keys read from a JWKS file."""
    pair = request.getfixturevalue(fixture)
    pair = pair[0] if isinstance(pair, list) else pair
    config = make_config(jwt={"algorithms": [alg]}, jwks=[pair.jwk])
    token = pyjwt.encode(claims(), pair.private, algorithm=alg, headers={"kid": pair.jwk["kid"]})
    caller = await call(make_auth(config), config, bearer(token))
    assert caller.consumer == "acme"


async def test_token_without_kid_uses_the_only_key(rs_config: Config, make_auth: Any,
                                                   rsa_keys: Any) -> None:
    """A token without kid verifies when exactly one key fits its algorithm."""
    token = pyjwt.encode(claims(), rsa_keys[0].private, algorithm="RS256")
    assert (await call(make_auth(rs_config), rs_config, bearer(token))).consumer == "acme"


def _rsa_pem(rsa_keys: Any) -> bytes:
    return bytes(rsa_keys[0].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def bad_tokens(rsa_keys: Any, ec_key: Any) -> dict[str, str]:
    """Every kind of broken token, by name."""
    rsa_priv, other_priv = rsa_keys[0].private, rsa_keys[1].private
    kid = {"kid": "rsa-1"}
    ec_pem = ec_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    good = pyjwt.encode(claims(), rsa_priv, algorithm="RS256", headers=kid)
    head, body, sig = good.split(".")
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    upper_none_head = b64(json.dumps({"alg": "NONE"}).encode())
    return {
        "alg none": f"{none_head}.{body}.",
        "alg none uppercase": f"{upper_none_head}.{body}.",
        "HS256 with the RSA public key PEM": hand_signed_hs256(claims(), _rsa_pem(rsa_keys), **kid),
        "HS256 with the EC public key PEM": hand_signed_hs256(claims(), ec_pem, kid="ec-1"),
        "unknown kid": pyjwt.encode(claims(), rsa_priv, algorithm="RS256",
                                    headers={"kid": "nope"}),
        "expired": pyjwt.encode(claims(exp=NOW - 31), rsa_priv, algorithm="RS256", headers=kid),
        "nbf in the future": pyjwt.encode(claims(nbf=NOW + 31), rsa_priv, algorithm="RS256",
                                          headers=kid),
        "wrong aud": pyjwt.encode(claims(aud="other"), rsa_priv, algorithm="RS256", headers=kid),
        "wrong iss": pyjwt.encode(claims(iss="https://evil.test"), rsa_priv, algorithm="RS256",
                                  headers=kid),
        "no exp": pyjwt.encode(claims(exp=None), rsa_priv, algorithm="RS256", headers=kid),
        "exp not a number": pyjwt.encode(claims(exp="tomorrow"), rsa_priv, algorithm="RS256",
                                         headers=kid),
        "no sub": pyjwt.encode(claims(sub=None), rsa_priv, algorithm="RS256", headers=kid),
        "sub not a string": pyjwt.encode(claims(sub=42), rsa_priv, algorithm="RS256",
                                         headers=kid),
        "sub with CR LF": pyjwt.encode(claims(sub="acme\r\nx-admin: 1"), rsa_priv,
                                       algorithm="RS256", headers=kid),
        "signed by another key": pyjwt.encode(claims(), other_priv, algorithm="RS256",
                                              headers=kid),
        "payload swapped": f"{head}.{b64(json.dumps(claims(sub='root')).encode())}.{sig}",
        "signature truncated": f"{head}.{body}.{sig[:-10]}",
        "RS384 not allowed": pyjwt.encode(claims(), rsa_priv, algorithm="RS384", headers=kid),
        "two parts": f"{head}.{body}",
        "four parts": f"{good}.{sig}",
        "not base64": "!!!.@@@.###",
        "header not json": f"{b64(b'not json')}.{body}.{sig}",
        "header a list": f"{b64(b'[1,2]')}.{body}.{sig}",
        "payload a list": f"{head}.{b64(b'[1]')}.{sig}",
        "kid not a string": f"{b64(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.{body}.{sig}",
        "huge": f"{head}.{'A' * 200_000}.{sig}",
        "empty parts": "..",
        "non-ascii": f"{head}.{body}.{sig}\u00e9",
        "lone surrogate": f"{head}.{body}.\ud800",
    }


# Why each bad token is refused: the reason pins *which* check caught it.
BAD = {
    "alg none": "algorithm not allowed",
    "alg none uppercase": "algorithm not allowed",
    "HS256 with the RSA public key PEM": "algorithm not allowed",
    "HS256 with the EC public key PEM": "algorithm not allowed",
    "unknown kid": "unknown signing key",
    "expired": "token expired",
    "nbf in the future": "token not yet valid",
    "wrong aud": "wrong audience",
    "wrong iss": "wrong issuer",
    "no exp": "missing exp claim",
    "exp not a number": "exp must be a number",
    "no sub": "no sub claim",
    "sub not a string": "invalid token",
    "sub with CR LF": "bad sub claim",
    "signed by another key": "bad signature",
    "payload swapped": "bad signature",
    "signature truncated": "bad signature",
    "RS384 not allowed": "algorithm not allowed",
    "two parts": "malformed token",
    "four parts": "malformed token",
    "not base64": "malformed token",
    "header not json": "malformed token",
    "header a list": "malformed token",
    "payload a list": "bad signature",
    "kid not a string": "malformed token",
    "huge": "token too large",
    "empty parts": "malformed token",
    "non-ascii": "malformed token",
    "lone surrogate": "malformed token",
}


@pytest.mark.parametrize("name", list(BAD))
async def test_every_bad_token_is_a_401(name: str, make_config: Callable[..., Config],
                                        make_auth: Any, rsa_keys: Any, ec_key: Any) -> None:
    """Each broken, forged or out-of-date token is a 401 invalid_token, never another error."""
    config = make_config(jwt={"algorithms": ["RS256"]}, jwks=[rsa_keys[0].jwk])
    token = bad_tokens(rsa_keys, ec_key)[name]
    with pytest.raises(AuthError) as caught:
        await call(make_auth(config), config, bearer(token))
    assert (caught.value.status, caught.value.message) == (401, BAD[name])
    assert caught.value.www_authenticate is not None
    assert 'error="invalid_token"' in caught.value.www_authenticate


async def test_hs256_with_ec_pem_fails_against_es256_keys(
    make_config: Callable[..., Config], make_auth: Any, ec_key: Any,
) -> None:
    """Algorithm confusion on an ES256-only config: HS256 keyed by the EC PEM is a 401."""
    config = make_config(jwt={"algorithms": ["ES256"]}, jwks=[ec_key.jwk])
    pem = ec_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(AuthError) as caught:
        await call(make_auth(config), config, bearer(hand_signed_hs256(claims(), pem,
                                                                       kid="ec-1")))
    assert caught.value.status == 401


@pytest.mark.parametrize("header", [{}, {"authorization": "Basic YTpi"},
                                    {"authorization": "Bearer "}, {"authorization": "Bearer"}])
async def test_missing_bearer_token_is_a_401_without_error_code(
    header: dict[str, str], hs_config: Config, make_auth: Any,
) -> None:
    """No bearer credentials: 401 with a bare Bearer challenge (RFC 6750 section 3.1)."""
    with pytest.raises(AuthError) as caught:
        await call(make_auth(hs_config), hs_config, header)
    assert caught.value.status == 401
    assert caught.value.www_authenticate == 'Bearer realm="apigate"'


async def test_leeway_accepts_slightly_expired_and_early_tokens(
    hs_config: Config, make_auth: Any,
) -> None:
    """Within leeway_s (30 s) an expired or not-yet-valid token is still accepted."""
    auth = make_auth(hs_config)
    late = pyjwt.encode(claims(exp=NOW - 29), SECRET, algorithm="HS256")
    early = pyjwt.encode(claims(nbf=NOW + 29), SECRET, algorithm="HS256")
    assert (await call(auth, hs_config, bearer(late))).consumer == "acme"
    assert (await call(auth, hs_config, bearer(early))).consumer == "acme"


async def test_disabled_consumer_token_is_a_401(make_config: Callable[..., Config],
                                                make_auth: Any) -> None:
    """A valid token whose consumer is disabled in the directory is refused."""
    config = make_config(jwt={"algorithms": ["HS256"], "secret": SECRET},
                         consumers={"acme": {"disabled": True}})
    token = pyjwt.encode(claims(), SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as caught:
        await call(make_auth(config), config, bearer(token))
    assert caught.value.status == 401


def test_short_hmac_secret_is_a_config_error(make_config: Callable[..., Config],
                                             make_auth: Any) -> None:
    """An HS512 secret shorter than 64 bytes is refused when the Authenticator is built."""
    from apigate.config import ConfigError

    config = make_config(jwt={"algorithms": ["HS512"], "secret": "x" * 32})
    with pytest.raises(ConfigError, match=r"auth\.jwt\.secret"):
        make_auth(config)


def test_jwks_file_without_usable_key_is_a_config_error(
    make_config: Callable[..., Config], make_auth: Any, ec_key: Any,
) -> None:
    """A JWKS file with no key for the allowed algorithms is refused at build time."""
    from apigate.config import ConfigError

    config = make_config(jwt={"algorithms": ["RS256"]}, jwks=[ec_key.jwk])
    with pytest.raises(ConfigError, match="no key usable"):
        make_auth(config)


def test_unusable_jwks_file_is_refused_when_the_config_is_loaded(
    tmp_path: Any, ec_key: Any,
) -> None:
    """`apigate check` and reloads see the same refusal as building the Authenticator."""
    from apigate.config import ConfigError, load_config

    (tmp_path / "keys.json").write_text(json.dumps({"keys": [ec_key.jwk]}))
    path = tmp_path / "apigate.yaml"
    path.write_text("auth:\n  jwt:\n    algorithms: [RS256]\n    jwks_file: keys.json\n")
    with pytest.raises(ConfigError, match=r"apigate\.yaml: auth\.jwt\.jwks_file: .*no key usable"):
        load_config(path, env={})

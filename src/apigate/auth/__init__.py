"""Authentication: turn a request's credentials into a :class:`~apigate.identity.Caller`.

The data plane calls one thing, :meth:`Authenticator.authenticate`, and answers an
:class:`AuthError` with its status and ``WWW-Authenticate`` header. Build one per config
snapshot; on reload::

    new = old.with_config(config)   # may raise ConfigError: keep the old one
    await new.start()
    # ... swap it in ...
    await old.aclose()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from apigate.auth.api_key import hash_key, presented_key, strip_query_param
from apigate.auth.consumers import Consumer, ConsumerDirectory, ConsumerError
from apigate.auth.jwks import Fetch
from apigate.auth.jwt import JwtVerifier, TokenRejected
from apigate.config.model import Config, RouteConfig
from apigate.identity import Caller

__all__ = [
    "AuthError",
    "Authenticator",
    "Consumer",
    "ConsumerDirectory",
    "ConsumerError",
    "hash_key",
]

_API_KEY_CHALLENGE = 'ApiKey realm="apigate"'
_BEARER_CHALLENGE = 'Bearer realm="apigate"'


class AuthError(Exception):
    """The request is refused: answer ``status`` with ``WWW-Authenticate`` when it is set."""

    def __init__(self, status: int, message: str, www_authenticate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.www_authenticate = www_authenticate


def _invalid_token(reason: str) -> AuthError:
    # RFC 6750 section 3: error="invalid_token" for a token that is expired, revoked,
    # malformed or otherwise invalid; the description never echoes the token.
    quoted = reason.replace("\\", "").replace('"', "")
    return AuthError(401, reason,
                     f'{_BEARER_CHALLENGE}, error="invalid_token", error_description="{quoted}"')


class Authenticator:
    """API key and JWT authentication plus the consumer directory, for one config snapshot."""

    def __init__(self, config: Config, directory: ConsumerDirectory, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 fetch: Fetch | None = None) -> None:
        """Raises ConfigError when the JWT keys cannot be used (short secret, bad JWKS file)."""
        self._config = config
        self._directory = directory
        self._time = (clock, monotonic, fetch)
        jwt_cfg = config.auth.jwt
        self._jwt = (JwtVerifier(jwt_cfg, clock=clock, monotonic=monotonic, fetch=fetch)
                     if jwt_cfg is not None else None)
        api_key = config.auth.api_key
        self._api_key_headers = frozenset({api_key.header.lower()} if api_key.header else ())

    @property
    def directory(self) -> ConsumerDirectory:
        return self._directory

    @property
    def config(self) -> Config:
        return self._config

    def with_config(self, config: Config) -> Authenticator:
        """The authenticator for a reloaded config (Redis consumers and their poller shared)."""
        clock, monotonic, fetch = self._time
        return Authenticator(config, self._directory.with_config(config), clock=clock,
                             monotonic=monotonic, fetch=fetch)

    async def start(self) -> None:
        """Load Redis consumers, start polling them, and fetch ``jwks_url`` once."""
        await self._directory.start()
        if self._jwt is not None:
            await self._jwt.start()

    async def aclose(self) -> None:
        if self._jwt is not None:
            await self._jwt.aclose()
        await self._directory.aclose()

    async def authenticate(self, route: RouteConfig, headers: Mapping[str, str], query: str,
                           client_ip: str) -> Caller:
        """Who calls ``route``; ``headers`` have lower-case names, ``query`` is raw.

        Raises AuthError: 401 for missing or bad credentials (or a disabled consumer), 403
        when ``route.consumers`` does not list the consumer.
        """
        caller = self.authenticate_now(route, headers, query, client_ip)
        if caller is None:
            consumer, claims = await self._jwt_consumer(headers)
            caller = Caller(client_ip, consumer, claims)
            self._check_route(route, caller)
        return caller

    def authenticate_now(self, route: RouteConfig, headers: Mapping[str, str], query: str,
                         client_ip: str) -> Caller | None:
        """:meth:`authenticate` without waiting: None for a route whose credentials may need
        it (``auth: jwt``, whose keys may have to be fetched)."""
        auth = route.auth
        if auth == "jwt":
            return None
        if auth == "api_key":
            caller = Caller(client_ip, self._api_key_consumer(headers, query))
        else:
            caller = Caller(client_ip)
        self._check_route(route, caller)
        return caller

    def consumer_policies(self, consumer: str) -> tuple[str, ...]:
        """The rate-limit policy names ``consumer`` gets on every route (config or Redis)."""
        return self._directory.policies(consumer)

    def credential_headers(self, route: RouteConfig) -> frozenset[str]:
        """Lower-case header names to strip before forwarding (none if forward_credentials)."""
        if route.forward_credentials:
            return frozenset()
        if route.auth == "api_key":
            return self._api_key_headers
        if route.auth == "jwt":
            return frozenset({"authorization"})
        return frozenset()

    def strip_query_credential(self, query: str) -> str:
        """The raw query without the API key parameter (unchanged if keys come in a header).

        Call it on ``auth: api_key`` routes unless ``route.forward_credentials``.
        """
        name = self._config.auth.api_key.query
        return strip_query_param(query, name) if name and query else query

    def _api_key_consumer(self, headers: Mapping[str, str], query: str) -> str:
        raw = presented_key(self._config.auth.api_key, headers, query)
        if raw is None:
            raise AuthError(401, "API key required", _API_KEY_CHALLENGE)
        consumer = self._directory.consumer_for_key(raw)
        if consumer is None:
            raise AuthError(401, "invalid API key", _API_KEY_CHALLENGE)
        self._refuse_disabled(consumer, _API_KEY_CHALLENGE)
        return consumer

    async def _jwt_consumer(self, headers: Mapping[str, str]) -> tuple[str, Mapping[str, object]]:
        if self._jwt is None:  # the config loader refuses auth: jwt without auth.jwt
            raise AuthError(401, "JWT auth is not configured", _BEARER_CHALLENGE)
        scheme, _, token = headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            # RFC 6750 section 3.1: no error code when the request has no credentials.
            raise AuthError(401, "bearer token required", _BEARER_CHALLENGE)
        try:
            claims = await self._jwt.verify(token)
        except TokenRejected as exc:
            raise _invalid_token(exc.reason) from None
        consumer = str(claims[self._jwt.consumer_claim])
        self._refuse_disabled(consumer, f'{_BEARER_CHALLENGE}, error="invalid_token"')
        return consumer, claims

    def _check_route(self, route: RouteConfig, caller: Caller) -> None:
        if route.consumers is not None and caller.consumer not in route.consumers:
            raise AuthError(403, f"consumer may not use route {route.name!r}")

    def _refuse_disabled(self, name: str, challenge: str) -> None:
        known = self._directory.get(name)
        if known is not None and known.disabled:
            raise AuthError(401, "consumer is disabled", challenge)

"""The typed, immutable configuration model: the shape of ``apigate.example.yaml``.

Every model is frozen and forbids unknown keys; cross-references (a route naming an upstream or
a limit) are checked in :class:`Config` so that errors carry the dotted path of the bad field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from apigate.config.types import Cidr, DurationMs, HostPort, ListenAddress, StorageUrl, TargetUrl

# A sliding log keeps one sorted-set member per request in the window; above this many the
# per-decision cost (ZREMRANGEBYSCORE + ZCARD + memory) stops being cheap.
SLIDING_LOG_MAX_LIMIT = 10_000

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


_TOKEN = re.compile(r"^[\x21-\x7e]{16,512}$")


def _admin_token(value: str | None) -> str | None:
    if value is not None and not _TOKEN.match(value):
        raise ValueError("admin_token must be 16 to 512 printable ASCII characters, no spaces "
                         "(generate one: openssl rand -hex 32)")
    return value


def _workers(value: object) -> object:
    """One message for every bad value (not one per member of ``int | "auto"``)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("workers must be between 1 and 256, or 'auto'")
    try:
        count = int(value)
    except ValueError:
        raise ValueError("workers must be between 1 and 256, or 'auto'") from None
    if not 1 <= count <= 256:
        raise ValueError("workers must be between 1 and 256, or 'auto'")
    return count


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ServerConfig(_Frozen):
    listen: ListenAddress = HostPort("0.0.0.0", 8080)
    admin_listen: ListenAddress = HostPort("127.0.0.1", 9901)
    # When set (from ${ENV}, say), the admin API wants "Authorization: Bearer <token>";
    # /healthz, /readyz, /metrics and /dashboard stay open for probes and scrapers.
    admin_token: Annotated[str | None, AfterValidator(_admin_token)] = None
    workers: Annotated[int | Literal["auto"], BeforeValidator(_workers)] = 1
    trusted_proxies: tuple[Cidr, ...] = ()
    ipv6_prefix: int = Field(default=64, ge=1, le=128)
    max_header_bytes: int = Field(default=16384, ge=1024, le=1 << 20)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    header_timeout_s: float = Field(default=10, gt=0)
    keepalive_timeout_s: float = Field(default=60, gt=0)
    max_connections: int = Field(default=10000, ge=1)
    shutdown_grace_s: float = Field(default=30, ge=0)
    drain_delay_s: float = Field(default=5, ge=0)


class StorageConfig(_Frozen):
    url: StorageUrl = "memory://"
    timeout_ms: int = Field(default=50, ge=1, le=60_000)
    on_failure: Literal["open", "closed", "local"] = "open"
    key_prefix: str = Field(default="apigate", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")


class UpstreamConfig(_Frozen):
    targets: tuple[TargetUrl, ...] = Field(min_length=1)
    balance: Literal["round_robin", "least_conn", "random"] = "round_robin"
    connect_timeout_s: float = Field(default=2, gt=0)
    read_timeout_s: float = Field(default=30, gt=0)
    retries: int = Field(default=1, ge=0, le=10)
    max_failures: int = Field(default=3, ge=1)
    eject_s: float = Field(default=10, ge=0)
    pool_size: int = Field(default=64, ge=0, le=10_000)


class RouteMatch(_Frozen):
    hosts: tuple[str, ...] = ()
    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_path_form(self) -> RouteMatch:
        given = [n for n in ("path", "path_prefix", "path_regex") if getattr(self, n) is not None]
        if len(given) > 1:
            both = " and ".join(given)
            raise ValueError(f"give one of path, path_prefix, path_regex, not {both}")
        for name in ("path", "path_prefix"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{name} must start with '/': {value!r}")
        if self.path_regex is not None:
            try:
                re.compile(self.path_regex)
            except re.error as exc:
                raise ValueError(f"bad path_regex {self.path_regex!r}: {exc}") from None
        return self

    @field_validator("methods")
    @classmethod
    def _methods_upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for method in value:
            if not _HEADER_NAME.match(method):
                raise ValueError(f"bad method {method!r}")
        return tuple(m.upper() for m in value)

    @field_validator("hosts")
    @classmethod
    def _hosts_lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            bare = host[2:] if host.startswith("*.") else host
            if not bare or "*" in bare or "/" in bare:
                raise ValueError(f"bad host {host!r}: exact name or '*.example.com'")
        return tuple(h.lower() for h in value)


class RouteConfig(_Frozen):
    name: str = Field(min_length=1)
    match: RouteMatch = RouteMatch()
    upstream: str
    strip_prefix: bool = False
    auth: Literal["none", "api_key", "jwt"] = "none"
    rate_limits: tuple[str, ...] = ()
    forward_credentials: bool = False  # pass the API key / Authorization header upstream
    consumers: tuple[str, ...] | None = None  # None: any authenticated consumer may call


def _validate_key_part(part: str) -> None:
    if part in ("client_ip", "consumer", "route"):
        return
    kind, sep, name = part.partition(":")
    if sep and kind == "header" and _HEADER_NAME.match(name):
        return
    if sep and kind == "jwt" and _CLAIM_NAME.match(name):
        return
    raise ValueError(
        f"bad key part {part!r}: use client_ip, consumer, route, header:NAME or jwt:CLAIM"
    )


class RateLimitPolicy(_Frozen):
    limit: int = Field(ge=1, le=1_000_000_000)
    window: DurationMs
    algorithm: Literal["fixed_window", "sliding_window", "sliding_log", "token_bucket"] = (
        "sliding_window"
    )
    burst: int = Field(default=0, ge=0)
    key: str = "client_ip"
    cost: int | str = 1
    shadow: bool = False

    @field_validator("key")
    @classmethod
    def _key_parts(cls, value: str) -> str:
        for part in value.split("+"):
            _validate_key_part(part)
        return value

    @field_validator("cost")
    @classmethod
    def _cost_spec(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("cost must be >= 1")
            return value
        kind, sep, name = value.partition(":")
        if not (sep and kind == "header" and _HEADER_NAME.match(name)):
            raise ValueError(f"bad cost {value!r}: a whole number >= 1 or header:NAME")
        return value

    @model_validator(mode="after")
    def _algorithm_rules(self) -> RateLimitPolicy:
        if self.burst and self.algorithm != "token_bucket":
            raise ValueError(f"burst applies to token_bucket only, not {self.algorithm}")
        if self.algorithm == "sliding_log" and self.limit > SLIDING_LOG_MAX_LIMIT:
            raise ValueError(
                f"sliding_log keeps one entry per request; limit {self.limit} exceeds "
                f"{SLIDING_LOG_MAX_LIMIT}: use sliding_window for large limits"
            )
        if isinstance(self.cost, int) and self.cost > self.limit + self.burst:
            raise ValueError(f"cost {self.cost} exceeds limit {self.limit}: no request could pass")
        return self


class ApiKeyAuth(_Frozen):
    header: str | None = "X-API-Key"
    query: str | None = None

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not a header name (RFC 9110 token)")
        return value

    @field_validator("query")
    @classmethod
    def _query_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "&=#? ")):
            raise ValueError(f"{value!r} is not a query parameter name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeyAuth:
        if self.query is not None and "header" not in self.model_fields_set:
            return self.model_copy(update={"header": None})
        if self.header is None and self.query is None:
            raise ValueError("give header or query")
        return self


JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"
]


class JwtAuth(_Frozen):
    algorithms: tuple[JwtAlgorithm, ...] = Field(default=("RS256",), min_length=1)
    jwks_file: str | None = None
    jwks_url: str | None = None
    secret: str | None = None
    issuer: str | None = None
    audience: str | None = None
    consumer_claim: str = "sub"
    leeway_s: float = Field(default=30, ge=0)
    jwks_min_refresh_s: float = Field(default=30, ge=0)
    jwks_cache_s: float = Field(default=300, ge=1)

    @field_validator("algorithms", mode="before")
    @classmethod
    def _no_none(cls, value: object) -> object:
        if isinstance(value, list | tuple) and any(str(a).lower() == "none" for a in value):
            raise ValueError("'none' is never an accepted JWT algorithm")
        return value

    @model_validator(mode="after")
    def _key_source(self) -> JwtAuth:
        sources = [n for n in ("jwks_file", "jwks_url", "secret") if getattr(self, n)]
        if len(sources) != 1:
            raise ValueError("give exactly one of jwks_file, jwks_url, secret")
        hmac = {a for a in self.algorithms if a.startswith("HS")}
        if self.secret and hmac != set(self.algorithms):
            raise ValueError("secret works with HS256/HS384/HS512 only")
        if not self.secret and hmac:
            raise ValueError("HS* algorithms need a secret (mixing them with JWKS keys invites "
                             "algorithm confusion)")
        if self.jwks_url and not self.jwks_url.startswith(("http://", "https://")):
            raise ValueError(f"bad jwks_url {self.jwks_url!r}")
        return self


class AuthConfig(_Frozen):
    api_key: ApiKeyAuth = ApiKeyAuth()
    jwt: JwtAuth | None = None


ApiKeyHash = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class ConsumerConfig(_Frozen):
    api_keys: tuple[ApiKeyHash, ...] = ()
    rate_limits: tuple[str, ...] = ()
    disabled: bool = False


class ObservabilityConfig(_Frozen):
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics: bool = True


class Config(_Frozen):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    upstreams: dict[str, UpstreamConfig] = {}
    routes: tuple[RouteConfig, ...] = ()
    rate_limits: dict[str, RateLimitPolicy] = {}
    rate_limit_headers: Literal["ietf", "legacy", "both", "none"] = "ietf"
    auth: AuthConfig = AuthConfig()
    consumers: dict[str, ConsumerConfig] = {}
    observability: ObservabilityConfig = ObservabilityConfig()

"""Loading configs: ``${VAR}`` interpolation, the documented example's shape, defaults, workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from apigate.config import ConfigError, load_config, parse_config
from apigate.config.types import HostPort
from apigate.cpus import usable_cpus
from apigate.supervisor import worker_count

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLE = CONFIG_DIR / "apigate.example.yaml"


def test_variable_is_replaced_from_the_environment() -> None:
    """``${VAR}`` takes the variable's value before validation, so typed fields still parse."""
    config = parse_config(
        'server:\n  listen: "${HOST}:${PORT}"\n  max_connections: "${MAXC}"\n',
        source="test.yaml", env={"HOST": "127.0.0.1", "PORT": "9000", "MAXC": "42"},
    )
    assert config.server.listen == HostPort("127.0.0.1", 9000)
    assert config.server.max_connections == 42


def test_default_applies_only_when_the_variable_is_unset() -> None:
    """``${VAR:-default}`` uses the default when VAR is unset and VAR's value when it is set."""
    text = 'server:\n  listen: "127.0.0.1:${PORT:-8181}"\nstorage:\n  key_prefix: "p${SUFFIX:-}"\n'
    unset = parse_config(text, source="t.yaml", env={})
    assert unset.server.listen.port == 8181
    assert unset.storage.key_prefix == "p"
    given = parse_config(text, source="t.yaml", env={"PORT": "7000", "SUFFIX": "x"})
    assert given.server.listen.port == 7000
    assert given.storage.key_prefix == "px"


def test_missing_variable_without_default_names_the_field() -> None:
    """An unset ``${VAR}`` without a default is an error naming the file, field and variable."""
    with pytest.raises(ConfigError) as refused:
        parse_config('server:\n  listen: "0.0.0.0:${NOPE}"\n', source="t.yaml", env={})
    assert str(refused.value) == "t.yaml: server.listen: environment variable NOPE is not set"


def test_variables_in_comments_are_ignored() -> None:
    """A ``${VAR}`` inside a YAML comment is never interpolated (nor reported missing)."""
    config = parse_config("# uses ${NOT_SET}\nserver:\n  workers: 2  # ${ALSO_NOT}\n",
                          source="t.yaml", env={})
    assert config.server.workers == 2


def test_secret_comes_from_the_environment() -> None:
    """A JWT secret written as ``${JWT_SECRET}`` is read from the environment."""
    text = 'auth:\n  jwt:\n    algorithms: ["HS256"]\n    secret: "${JWT_SECRET}"\n'
    secret = "s3cr3t-value-from-the-environment-32b"  # HS256 needs 32 bytes or more
    config = parse_config(text, source="t.yaml", env={"JWT_SECRET": secret})
    assert config.auth.jwt is not None
    assert config.auth.jwt.secret == secret


def test_example_config_loads_with_its_documented_shape() -> None:
    """The documented example loads and every section means what its comments say."""
    config = load_config(EXAMPLE, env={})
    server = config.server
    assert server.listen == HostPort("0.0.0.0", 8080)
    assert server.admin_listen == HostPort("127.0.0.1", 9901)
    assert (server.workers, server.trusted_proxies, server.ipv6_prefix) == (1, (), 64)
    assert (server.max_header_bytes, server.max_body_bytes) == (16384, 10 * 1024 * 1024)
    assert (server.header_timeout_s, server.keepalive_timeout_s) == (10, 60)
    assert (server.max_connections, server.shutdown_grace_s, server.drain_delay_s) == (10000, 30, 5)
    assert (config.storage.url, config.storage.timeout_ms) == ("memory://", 50)
    assert (config.storage.on_failure, config.storage.key_prefix) == ("open", "apigate")
    users = config.upstreams["users"]
    assert users.targets == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    assert (users.balance, users.retries, users.max_failures, users.pool_size) == (
        "round_robin", 1, 3, 64)
    route = config.routes[0]
    assert route.match.hosts == ("api.example.com",)
    assert (route.match.path_prefix, route.match.methods) == ("/users", ("GET", "POST"))
    assert (route.upstream, route.strip_prefix, route.auth) == ("users", False, "none")
    assert route.rate_limits == ("per-ip", "per-consumer")
    per_ip, per_consumer = config.rate_limits["per-ip"], config.rate_limits["per-consumer"]
    assert (per_ip.limit, per_ip.window, per_ip.algorithm) == (100, 1000, "sliding_window")
    assert (per_ip.key, per_ip.cost, per_ip.shadow, per_ip.burst) == ("client_ip", 1, False, 0)
    assert (per_consumer.limit, per_consumer.window) == (10000, 3_600_000)
    assert (per_consumer.algorithm, per_consumer.key) == ("fixed_window", "consumer")
    assert config.rate_limit_headers == "ietf"
    assert config.auth.api_key.header == "X-API-Key"
    jwt = config.auth.jwt
    assert jwt is not None
    assert jwt.algorithms == ("RS256",)
    assert jwt.jwks_file == str(CONFIG_DIR / "jwks.json")  # resolved next to the file
    assert (jwt.issuer, jwt.audience, jwt.consumer_claim) == (
        "https://issuer.example.com", "apigate", "sub")
    assert config.consumers["acme"].rate_limits == ("per-consumer",)
    assert config.observability.access_log
    assert config.observability.metrics


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    """An empty file is a valid config whose server section equals the example's defaults."""
    (tmp_path / "empty.yaml").write_text("")
    example = load_config(EXAMPLE, env={})
    assert load_config(tmp_path / "empty.yaml", env={}).server == example.server


def test_workers_auto_means_one_per_usable_cpu() -> None:
    """``workers: auto`` is kept as written and means one process per CPU this process may use
    (see test_cpus); --workers wins."""
    config = parse_config("server:\n  workers: auto\n", source="t.yaml", env={})
    assert config.server.workers == "auto"
    assert worker_count(config, None) == usable_cpus()
    assert worker_count(config, 3) == 3
    assert worker_count(parse_config("server:\n  workers: 4\n", source="t", env={}), None) == 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "t.yaml: server.workers: workers must be between 1 and 256, or 'auto'"),
        ("many", "t.yaml: server.workers: "),
    ],
)
def test_bad_workers_value_is_refused(value: str, message: str) -> None:
    """workers must be 1-256 or the word auto; every error line names exactly ``server.workers``
    (no union member such as ``server.workers.int`` leaks into the path)."""
    with pytest.raises(ConfigError) as refused:
        parse_config(f"server:\n  workers: {value}\n", source="t.yaml", env={})
    assert str(refused.value).startswith(message)
    assert all(line.startswith("t.yaml: server.workers: ") for line in refused.value.lines())

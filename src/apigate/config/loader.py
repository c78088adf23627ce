"""Load a YAML file into a :class:`Config`: ``${VAR}`` interpolation, validation, references.

Every error is a :class:`ConfigError` whose lines read ``FILE: dotted.path: message``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from apigate.config.model import Config

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one line per bad field."""

    def __init__(self, source: str, problems: Iterable[tuple[str, str]]) -> None:
        self.source = source
        self.problems = [(path, message) for path, message in problems]
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
            for path, message in self.problems
        ]


def interpolate(value: Any, env: Mapping[str, str], source: str, path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string scalar of parsed YAML.

    ``{"port": "${PORT:-80}"}`` -> ``{"port": "80"}`` when PORT is unset. Comments are never
    touched because this runs after parsing.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env, source, f"{path}.{k}" if path else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = _ENV.sub(substitute, value)
    if missing:
        raise ConfigError(source, [(path, f"environment variable {n} is not set") for n in missing])
    return result


def dotted(loc: Iterable[int | str]) -> str:
    """Render a pydantic location: ``("routes", 2, "upstream")`` -> ``"routes[2].upstream"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")) or "[" in part:
            continue  # validator frames in the location, not fields
        else:
            out += f".{part}" if out else part
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def parse_config(
    text: str,
    *,
    source: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Build a validated :class:`Config` from YAML text; ``source`` names it in errors.

    Relative file paths inside (``auth.jwt.jwks_file``) resolve against ``base_dir``.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [("", _yaml_problem(exc))]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "the top level must be a mapping")])
    data = interpolate(data, os.environ if env is None else env, source)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [(dotted(e["loc"]), _message(e)) for e in exc.errors()]
        raise ConfigError(source, problems) from None
    jwt = config.auth.jwt
    if jwt is not None and jwt.jwks_file and not os.path.isabs(jwt.jwks_file):
        resolved = str((base_dir or Path.cwd()) / jwt.jwks_file)
        jwt = jwt.model_copy(update={"jwks_file": resolved})
        auth = config.auth.model_copy(update={"jwt": jwt})
        config = config.model_copy(update={"auth": auth})
    problems = list(check_references(config))
    if problems:
        raise ConfigError(source, problems)
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``"not valid YAML at line 29, column 1: expected the node content..."``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"not valid YAML: {problem}"
    return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML file at ``path`` (relative paths inside stay file-relative)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, source=source, env=env, base_dir=Path(path).resolve().parent)


def check_references(config: Config) -> Iterable[tuple[str, str]]:
    """Yield ``(path, message)`` for every name that points nowhere or clashes."""
    seen: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        at = f"routes[{i}]"
        if route.name in seen:
            first = seen[route.name]
            yield f"{at}.name", f"duplicate route name {route.name!r} (also routes[{first}])"
        seen.setdefault(route.name, i)
        if route.upstream not in config.upstreams:
            yield f"{at}.upstream", f"no upstream named {route.upstream!r}"
        for j, name in enumerate(route.rate_limits):
            if name not in config.rate_limits:
                yield f"{at}.rate_limits[{j}]", f"no rate limit named {name!r}"
        if route.auth == "jwt" and config.auth.jwt is None:
            yield f"{at}.auth", "auth: jwt needs an auth.jwt section"
        for j, name in enumerate(route.consumers or ()):
            if name not in config.consumers:
                yield f"{at}.consumers[{j}]", f"no consumer named {name!r}"
    for name, consumer in config.consumers.items():
        for j, limit in enumerate(consumer.rate_limits):
            if limit not in config.rate_limits:
                yield f"consumers.{name}.rate_limits[{j}]", f"no rate limit named {limit!r}"
    if config.storage.url.startswith("memory:") and config.rate_limits:
        message = memory_workers_problem(config.server.workers)
        if message:
            yield "storage.url", message
    jwt = config.auth.jwt
    if jwt is not None and jwt.jwks_file and not os.path.isfile(jwt.jwks_file):
        yield "auth.jwt.jwks_file", f"no such file {jwt.jwks_file!r}"
    elif jwt is not None:
        from apigate.auth.jwt import key_problems  # noqa: PLC0415 (auth builds on config)

        yield from key_problems(jwt)


def memory_workers_problem(workers: int | str) -> str | None:
    """memory:// counters live in one process: with several workers a limit would multiply."""
    if workers == 1:
        return None
    return (
        f"memory:// keeps rate-limit counters inside one process, so with workers: {workers} "
        "every limit would be multiplied by the number of workers; use workers: 1 or a "
        "redis:// storage"
    )


def json_schema() -> str:
    """The JSON Schema of the config file, for editors."""
    schema = Config.model_json_schema(mode="validation")
    schema["title"] = "apigate configuration"
    return json.dumps(schema, indent=2, sort_keys=True)

"""Admin API for consumers: list, create, disable/enable, delete, usage, reset.

Only Redis consumers can be changed here; config consumers are edited in the file (409).
With ``memory://`` storage there are no Redis consumers and every write answers 409.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from apigate.admin.types import AdminError, AdminRequest, AdminResponse, AdminRoute
from apigate.auth import Authenticator
from apigate.auth.consumers import NAME, Consumer, ConsumerError

Usage = Callable[[str, str], Awaitable[dict[str, Any]]]
Reset = Callable[[str, str], Awaitable[None]]

_PATH = "/admin/consumers"
_T = TypeVar("_T")


def admin_routes(get_auth: Callable[[], Authenticator], usage: Usage | None,
                 reset: Reset | None) -> list[AdminRoute]:
    """The consumer endpoints; ``get_auth`` returns the current (hot-reloaded) Authenticator.

    ``usage(policy, key_value)`` / ``reset(policy, key_value)`` act on one rate-limit key;
    for a consumer the key value is ``consumer=<name>``. None: the endpoint answers 501.
    """

    async def list_consumers(request: AdminRequest) -> AdminResponse:
        directory = get_auth().directory
        return AdminResponse.of({
            "consumers": [_describe(c) for c in directory.all()],
            "redis_consumers": directory.redis_available,
        })

    async def create(request: AdminRequest) -> AdminResponse:
        name, api_keys, rate_limits = _create_body(request.json())
        consumer = await _run(get_auth().directory.create(name, api_keys, rate_limits))
        return AdminResponse.of(_describe(consumer), status=201)

    async def disable(request: AdminRequest) -> AdminResponse:
        return await _set_disabled(get_auth(), _name(request), disabled=True)

    async def enable(request: AdminRequest) -> AdminResponse:
        return await _set_disabled(get_auth(), _name(request), disabled=False)

    async def delete(request: AdminRequest) -> AdminResponse:
        name = _name(request)
        await _run(get_auth().directory.delete(name))
        return AdminResponse.of({"deleted": name})

    async def show_usage(request: AdminRequest) -> AdminResponse:
        if usage is None:
            raise AdminError(501, "usage is not available: no rate limiter is configured")
        name, policies = _consumer_policies(get_auth(), request)
        key_value = f"consumer={name}"
        return AdminResponse.of({
            "consumer": name,
            "policies": {policy: await usage(policy, key_value) for policy in policies},
        })

    async def reset_usage(request: AdminRequest) -> AdminResponse:
        if reset is None:
            raise AdminError(501, "reset is not available: no rate limiter is configured")
        name, policies = _consumer_policies(get_auth(), request)
        for policy in policies:
            await reset(policy, f"consumer={name}")
        return AdminResponse.of({"consumer": name, "reset": list(policies)})

    return [
        ("GET", _PATH, list_consumers),
        ("POST", _PATH, create),
        ("POST", f"{_PATH}/disable", disable),
        ("POST", f"{_PATH}/enable", enable),
        ("DELETE", _PATH, delete),
        ("GET", f"{_PATH}/usage", show_usage),
        ("POST", f"{_PATH}/reset", reset_usage),
    ]


def _describe(consumer: Consumer) -> dict[str, Any]:
    # Key hashes are not secrets, but nobody needs them here: show how many there are.
    return {
        "name": consumer.name,
        "source": consumer.source,
        "disabled": consumer.disabled,
        "api_keys": len(consumer.api_keys),
        "rate_limits": list(consumer.rate_limits),
    }


def _name(request: AdminRequest) -> str:
    name = request.query.get("name")
    if not name:
        raise AdminError(400, "give the consumer as ?name=")
    if not NAME.match(name):
        raise AdminError(400, "name must match ^[A-Za-z0-9_.-]{1,64}$")
    return name


def _create_body(body: Any) -> tuple[str, list[str], list[str]]:
    if not isinstance(body, dict):
        raise AdminError(400, 'body must be a JSON object: {"name": ..., "api_keys": [...], '
                              '"rate_limits": [...]}')
    unknown = sorted(set(body) - {"name", "api_keys", "rate_limits"})
    if unknown:
        raise AdminError(400, f"unknown fields: {', '.join(unknown)}")
    name = body.get("name")
    if not isinstance(name, str):
        raise AdminError(400, "name must be a string")
    lists = []
    for field in ("api_keys", "rate_limits"):
        value = body.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AdminError(400, f"{field} must be a list of strings")
        lists.append(value)
    return name, lists[0], lists[1]


async def _set_disabled(auth: Authenticator, name: str, *, disabled: bool) -> AdminResponse:
    consumer = await _run(auth.directory.set_disabled(name, disabled))
    return AdminResponse.of(_describe(consumer))


def _consumer_policies(auth: Authenticator, request: AdminRequest) -> tuple[str, tuple[str, ...]]:
    """The consumer and those of its policies keyed exactly by ``consumer``."""
    name = _name(request)
    consumer = auth.directory.get(name)
    if consumer is None:
        raise AdminError(404, f"no consumer named {name!r}")
    limits = auth.config.rate_limits
    keyed = tuple(p for p in consumer.rate_limits if p in limits and limits[p].key == "consumer")
    return name, keyed


async def _run(op: Awaitable[_T]) -> _T:
    try:
        return await op
    except ConsumerError as exc:
        raise AdminError(exc.status, exc.message) from None

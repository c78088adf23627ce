"""Admin API for rate limits: list policies, look at and reset one identity's usage.

``key`` is a rendered identity exactly as :mod:`apigate.ratelimit.keys` builds it, e.g.
``ip=203.0.113.7``, ``ip=2001:db8:1:2::/64``, ``consumer=acme`` or
``consumer=acme+route=users``::

    GET  /admin/ratelimit/policies                      -> {"policies": [...]}
    GET  /admin/ratelimit/usage?policy=per-ip&key=ip=203.0.113.7
    POST /admin/ratelimit/reset?policy=per-ip&key=ip=203.0.113.7

Missing or bad parameters answer 400, an unknown policy 404, storage down 503.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from apigate.admin.types import AdminError, AdminRequest, AdminResponse, AdminRoute
from apigate.ratelimit.limiter import RateLimiter, UnknownPolicyError
from apigate.ratelimit.storage.base import StorageError


def _params(request: AdminRequest) -> tuple[str, str]:
    policy = request.query.get("policy", "")
    key = request.query.get("key", "")
    if not policy or not key:
        raise AdminError(400, "give both query parameters: policy and key")
    return policy, key


@contextlib.contextmanager
def admin_errors(policy: str) -> Iterator[None]:
    """Limiter errors as admin answers: unknown policy 404, bad key 400, storage down 503."""
    try:
        yield
    except UnknownPolicyError:
        raise AdminError(404, f"no rate-limit policy {policy!r}") from None
    except ValueError as exc:
        raise AdminError(400, str(exc)) from None
    except (StorageError, TimeoutError):
        raise AdminError(503, "rate-limit storage unavailable") from None


def admin_routes(get_limiter: Callable[[], RateLimiter]) -> list[AdminRoute]:
    """The rate-limit admin routes; ``get_limiter`` returns the current (reloaded) limiter."""

    async def policies(request: AdminRequest) -> AdminResponse:
        del request
        return AdminResponse.of({"policies": get_limiter().describe_policies()})

    async def usage(request: AdminRequest) -> AdminResponse:
        policy, key = _params(request)
        with admin_errors(policy):
            return AdminResponse.of(await get_limiter().usage(policy, key))

    async def reset(request: AdminRequest) -> AdminResponse:
        policy, key = _params(request)
        with admin_errors(policy):
            await get_limiter().reset(policy, key)
        return AdminResponse.of({"policy": policy, "key": key, "reset": True})

    return [
        ("GET", "/admin/ratelimit/policies", policies),
        ("GET", "/admin/ratelimit/usage", usage),
        ("POST", "/admin/ratelimit/reset", reset),
    ]

"""Small helpers for the end-to-end auth tests: raw requests, the admin API, bounded polling."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from tests.integration.http.rawclient import RawClient, Response
from tests.support.gateway import Gateway
from tests.support.upstreams import ReceivedRequest, ScriptedUpstream

Headers = Sequence[tuple[str, str]]


def quiet_config(upstreams: dict[str, str], routes: list[dict[str, Any]],
                 **sections: Any) -> dict[str, Any]:
    """A whole config (upstream name -> URL) with access logs off; ``sections`` added as is."""
    return {
        "upstreams": {name: {"targets": [url], "retries": 0} for name, url in upstreams.items()},
        "routes": routes,
        "observability": {"access_log": False, "log_level": "warning"},
        **sections,
    }


def route(name: str, path_prefix: str, upstream: str, **options: Any) -> dict[str, Any]:
    """A route matching ``path_prefix``: ``route("keyed", "/keyed", "up", auth="api_key")``."""
    return {"name": name, "match": {"path_prefix": path_prefix}, "upstream": upstream,
            **options}


def send(port: int, target: str, headers: Headers = (), *, method: str = "GET") -> Response:
    """One request on a fresh connection, with exactly ``headers`` after Host."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gw.test"]
    lines += [f"{name}: {value}" for name, value in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with RawClient(port) as client:
        return client.request(data)


def admin(gateway: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call the admin API; the status and the decoded JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{gateway.admin_url}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; the last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_refused(response: Response, status: int = 401) -> dict[str, Any]:
    """``response`` is a JSON error with ``status`` (never a 500); its decoded body."""
    assert response.status == status, (response.status, response.body)
    assert (response.header("content-type") or "").startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "request_id"}, body
    return body


def only_request(upstream: ScriptedUpstream) -> ReceivedRequest:
    """The single request ``upstream`` received since it was last cleared."""
    assert len(upstream.requests) == 1, [r.target for r in upstream.requests]
    return upstream.requests[0]


def header_values(request: ReceivedRequest, name: str) -> list[str]:
    """Every value of header ``name`` the upstream received, in order."""
    return [value for n, value in request.headers if n == name.lower()]

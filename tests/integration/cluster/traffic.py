"""Concurrent HTTP clients for the cluster tests: keep-alive connections on threads.

``blast`` opens ``connections`` keep-alive connections spread round-robin over the given
gateway ports, releases them together and sends ``total`` requests; ``ClientLoop`` sends
requests one after another in the background until stopped. Every request becomes one
:class:`Result` (a connection error is a result too, with ``status`` None).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a client connects: ``Target("127.0.0.1", 8080)``."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Result:
    """One request as the client saw it."""

    target: Target
    status: int | None
    elapsed_s: float
    retry_after: str | None = None
    ratelimit: str | None = None
    error: str | None = None


def statuses(results: Sequence[Result]) -> Counter[int | None]:
    """``Counter({200: 100, 429: 300})``; connection errors count under None."""
    return Counter(r.status for r in results)


class _Client:
    """One keep-alive connection that reconnects after an error."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.target = target
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def request(self, path: str, headers: Headers) -> Result:
        started = time.monotonic()
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                self.target.host, self.target.port, timeout=self._timeout_s
            )
        try:
            self._conn.request("GET", path, headers=dict(headers))
            response = self._conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Result(self.target, None, time.monotonic() - started, error=repr(exc))
        if response.will_close:
            self.close()
        return Result(
            self.target, response.status, time.monotonic() - started,
            retry_after=response.getheader("Retry-After"),
            ratelimit=response.getheader("RateLimit"),
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def blast(
    targets: Sequence[Target],
    *,
    total: int,
    connections: int,
    path: str,
    headers: Callable[[int], Headers] = lambda _: {},
    timeout_s: float = 10.0,
) -> list[Result]:
    """Send ``total`` GETs over ``connections`` simultaneous keep-alive connections.

    Connection ``i`` goes to ``targets[i % len(targets)]``; request ``n`` (0-based, global)
    carries ``headers(n)``. All connections start together (a barrier), so requests race.
    """
    results: list[list[Result]] = [[] for _ in range(connections)]
    barrier = threading.Barrier(connections)

    def run(index: int) -> None:
        client = _Client(targets[index % len(targets)], timeout_s)
        barrier.wait()
        try:
            for n in range(index, total, connections):
                results[index].append(client.request(path, headers(n)))
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s * (total // connections + 2))
    return [r for per_connection in results for r in per_connection]


class ClientLoop:
    """Requests sent back to back from background threads until ``stop()``."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        path: str,
        headers: Headers | None = None,
        clients: int = 2,
        timeout_s: float = 5.0,
        max_requests: int = 200_000,
    ) -> None:
        self._targets = list(targets)
        self._path = path
        self._headers = dict(headers or {})
        self._timeout_s = timeout_s
        self._max = max_requests
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.results: list[Result] = []
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> ClientLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Result]:
        """The results so far (a copy)."""
        with self._lock:
            return list(self.results)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        """Block until at least ``count`` more requests have completed (bounded)."""
        goal = len(self.snapshot()) + count
        deadline = time.monotonic() + timeout_s
        while len(self.snapshot()) < goal and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> list[Result]:
        """Stop the clients, wait for them and return every result."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s + 5)
        return self.snapshot()

    def _run(self, index: int) -> None:
        client = _Client(self._targets[index % len(self._targets)], self._timeout_s)
        sent = 0
        try:
            while not self._stop.is_set() and sent < self._max:
                result = client.request(self._path, self._headers)
                sent += 1
                with self._lock:
                    self.results.append(result)
                if result.status is None:
                    time.sleep(0.01)  # a dead target: do not spin
        finally:
            client.close()


def remaining(result: Result) -> int | None:
    """``r`` of the first item of the RateLimit header: ``"p";r=41;t=9`` -> 41."""
    if result.ratelimit is None or ";r=" not in result.ratelimit:
        return None
    return int(result.ratelimit.split(";r=", 1)[1].split(";", 1)[0].split(",", 1)[0])


def assert_storage_exact(results: Sequence[Result], limit: int) -> None:
    """Storage handed out each of the ``limit`` slots of a fixed window exactly once.

    A 200 decided by storage carries ``r`` = what is left after it, so the allowed requests
    must carry ``r`` = limit-1 .. 0, each once. A 200 without that header (``open``) or a 503
    (``closed``) was answered by the failure mode because storage was too slow (a CPU-starved
    worker missed ``timeout_ms``); such a request may or may not have been charged, so each
    may leave one slot unseen. On a quiet machine there are none, and this is the plain
    "exactly ``limit`` allowed, the rest 429".
    """
    allowed = [r for r in results if r.status == 200]
    decided = [v for r in allowed if (v := remaining(r)) is not None]
    failures = len(allowed) - len(decided) + sum(1 for r in results if r.status == 503)
    assert set(statuses(results)) <= {200, 429, 503}, statuses(results)
    assert len(set(decided)) == len(decided), f"a slot was handed out twice: {sorted(decided)}"
    assert all(0 <= v < limit for v in decided), sorted(decided)
    assert limit - failures <= len(decided) <= limit, (len(decided), failures)

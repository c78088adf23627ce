"""The process model on real processes: workers sharing the port, restarts, readiness, SIGTERM
drain and SIGHUP reloads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.http.helpers import children, gateway_config, route, upstream
from tests.integration.http.rawclient import RawClient, Response, get, wait_until
from tests.support.gateway import (
    Gateway,
    apigate_executable,
    free_port,
    http_get,
    running_gateway,
)
from tests.support.upstreams import (
    Handler,
    ScriptedUpstream,
    UpstreamConn,
    UpstreamLoop,
    echo,
    echo_json,
)


@pytest.fixture(scope="module")
def scripted(upstream_loop: UpstreamLoop) -> ScriptedUpstream:
    return upstream_loop.serve("proc")


@pytest.fixture(autouse=True)
def _fresh(scripted: ScriptedUpstream) -> None:
    scripted.reset()


def config_for(
    scripted: ScriptedUpstream, prefix: str = "/v1", **server: object
) -> dict[str, object]:
    return gateway_config(
        {"up": upstream(scripted.url)}, [route("r", "up", path_prefix=prefix)], **server
    )


def fetch(gateway: Gateway, path: str = "/v1", timeout: float = 5.0) -> Response:
    with RawClient(gateway.port, timeout=timeout) as client:
        return client.request(get(path))


def socket_fds(pid: int) -> int:
    """How many sockets a process holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            continue
    return count


def slow_handler(seconds: float) -> Handler:
    async def handler(conn: UpstreamConn) -> None:
        while (request := await conn.read_request()) is not None:
            await asyncio.sleep(seconds)
            await conn.respond(200, echo_json(request))

    return handler


def in_background(gateway: Gateway, path: str = "/v1") -> tuple[threading.Thread, list[int]]:
    """Send one request from a thread; the list receives its status (or 0 on failure)."""
    result: list[int] = []

    def run() -> None:
        try:
            result.append(fetch(gateway, path, timeout=10).status)
        except OSError:
            result.append(0)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.fixture
def two_workers(scripted: ScriptedUpstream, tmp_path: Path) -> Iterator[Gateway]:
    """``apigate run --workers 2`` (the flag overrides ``server.workers: 1`` in the file)."""
    gateway = Gateway(config_for(scripted), tmp_path, workers=1)
    with gateway.log_path.open("ab") as log:
        gateway.process = subprocess.Popen(
            [*apigate_executable(), "run", "--config", str(gateway.path), "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


def test_two_workers_share_the_port(two_workers: Gateway) -> None:
    """``--workers 2`` starts two worker processes and both accept connections on the port."""
    assert two_workers.process is not None
    pids = children(two_workers.process.pid)
    assert len(pids) == 2
    before = {pid: socket_fds(pid) for pid in pids}
    clients = [RawClient(two_workers.port) for _ in range(24)]
    try:
        for client in clients:
            assert client.request(get("/v1")).status == 200
        gained = {pid: socket_fds(pid) - before[pid] for pid in pids}
    finally:
        for client in clients:
            client.close()
    assert all(n > 0 for n in gained.values()), gained


def test_killed_worker_is_restarted_and_service_continues(two_workers: Gateway) -> None:
    """After kill -9 of one worker the other keeps answering and the supervisor starts a new one."""
    assert two_workers.process is not None
    supervisor = two_workers.process.pid
    victim, survivor = children(supervisor)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not _running(victim))
    assert [fetch(two_workers).status for _ in range(20)] == [200] * 20
    assert wait_until(lambda: len(set(children(supervisor)) - {victim}) == 2, 10)
    assert survivor in children(supervisor)
    assert wait_until(lambda: http_get(f"{two_workers.admin_url}/readyz")[0] == 200, 10)
    assert [fetch(two_workers).status for _ in range(10)] == [200] * 10


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has already closed its sockets)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_readiness_fails_at_once_on_sigterm_while_inflight_requests_finish(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """/healthz and /readyz are 200; right after SIGTERM /readyz is 503 while a slow in-flight
    request still completes, and the process exits 0."""
    scripted.reset(slow_handler(1.5))
    gateway = Gateway(config_for(scripted, drain_delay_s=0.5), tmp_path)
    gateway.start()
    try:
        assert http_get(f"{gateway.admin_url}/healthz")[0] == 200
        assert http_get(f"{gateway.admin_url}/readyz")[0] == 200
        thread, result = in_background(gateway)
        assert wait_until(lambda: scripted.requests)
        gateway.signal(signal.SIGTERM)
        sent = time.monotonic()
        assert wait_until(lambda: http_get(f"{gateway.admin_url}/readyz")[0] == 503, 1)
        assert time.monotonic() - sent < 0.5
        thread.join(10)
        assert result == [200]
        assert gateway.process is not None
        assert gateway.process.wait(10) == 0
    finally:
        gateway.stop()


def test_sigterm_keeps_serving_new_requests_during_drain_delay(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """With drain_delay_s: 1, new requests are still served after SIGTERM; then exit code 0."""
    gateway = Gateway(config_for(scripted, drain_delay_s=1), tmp_path)
    gateway.start()
    try:
        gateway.signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.3)
        assert fetch(gateway).status == 200
        assert fetch(gateway).status == 200
        assert gateway.process is not None
        assert gateway.process.wait(10) == 0
        assert time.monotonic() - sent >= 0.9
    finally:
        gateway.stop()


@pytest.fixture
def reloadable(scripted: ScriptedUpstream, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(config_for(scripted), tmp_path) as gateway:
        yield gateway


def test_sighup_reload_changes_the_routes(reloadable: Gateway, scripted: ScriptedUpstream) -> None:
    """After SIGHUP with a file whose route moved from /v1 to /v2, /v2 is served and /v1 is 404."""
    assert fetch(reloadable, "/v1").status == 200
    config = config_for(scripted, prefix="/v2")
    config["server"] = reloadable.config["server"]
    reloadable.write_config(config)
    reloadable.signal(signal.SIGHUP)
    assert wait_until(lambda: fetch(reloadable, "/v2").status == 200)
    assert fetch(reloadable, "/v1").status == 404


def test_reload_applies_a_new_log_level(reloadable: Gateway, scripted: ScriptedUpstream) -> None:
    """observability.log_level changed by a reload takes effect: from warning to info the
    reload's own 'config reloaded' lines (info) appear; back at error they stop."""

    def reload_with(prefix: str, level: str) -> None:
        config = config_for(scripted, prefix=prefix)
        config["server"] = reloadable.config["server"]
        config["observability"] = {**config["observability"], "log_level": level}  # type: ignore[dict-item]
        reloadable.write_config(config)
        reloadable.signal(signal.SIGHUP)
        assert wait_until(lambda: fetch(reloadable, prefix).status == 200)

    assert "config reloaded" not in reloadable.output()  # started at warning
    reload_with("/v2", "info")
    assert wait_until(lambda: reloadable.output().count("config reloaded") >= 2)  # both
    reload_with("/v3", "error")
    time.sleep(0.5)
    before = reloadable.output().count("config reloaded")
    reload_with("/v4", "error")
    time.sleep(0.5)
    assert reloadable.output().count("config reloaded") == before


def test_reload_names_the_settings_that_wait_for_a_restart(
    reloadable: Gateway, scripted: ScriptedUpstream
) -> None:
    """A reload that also turns metrics off applies the rest (the new route serves) and says,
    in the log and the admin reply, that observability.metrics waits for a restart."""
    config = config_for(scripted, prefix="/v2")
    config["server"] = reloadable.config["server"]
    config["observability"] = {**config["observability"], "metrics": False}  # type: ignore[dict-item]
    reloadable.write_config(config)
    request = urllib.request.Request(f"{reloadable.admin_url}/admin/reload", method="POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        body = json.loads(reply.read())
    assert "takes effect after a restart: observability.metrics" in json.dumps(body)
    assert wait_until(lambda: fetch(reloadable, "/v2").status == 200)
    assert "takes effect after a restart: observability.metrics" in reloadable.output()


def test_worker_restarted_after_a_reload_keeps_the_started_listen_address(
    reloadable: Gateway, scripted: ScriptedUpstream
) -> None:
    """A reload that moves server.listen is applied otherwise (the new route serves). A worker
    restarted after it (kill -9) still listens where the instance started, with the reloaded
    routes, and the admin reply goes on naming server.listen as waiting for a restart."""
    assert reloadable.process is not None
    moved = free_port()
    config = config_for(scripted, prefix="/v2")
    config["server"] = {**reloadable.config["server"], "listen": f"127.0.0.1:{moved}"}
    reloadable.write_config(config)
    reloadable.signal(signal.SIGHUP)
    assert wait_until(lambda: fetch(reloadable, "/v2").status == 200)
    (victim,) = children(reloadable.process.pid)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: set(children(reloadable.process.pid)) - {victim} != set(), 10)
    assert wait_until(lambda: http_get(f"{reloadable.admin_url}/readyz")[0] == 200, 10)
    assert fetch(reloadable, "/v2").status == 200  # the started port, the reloaded routes
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", moved), timeout=1).close()
    request = urllib.request.Request(f"{reloadable.admin_url}/admin/reload", method="POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert "server.listen" in json.loads(reply.read()).get("detail", "")


def test_admin_token_from_the_config_guards_the_admin_api(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """server.admin_token (here from ${ENV}): /admin/reload wants the bearer token, /readyz and
    /metrics do not."""
    config = config_for(scripted)
    config["server"] = {**config.get("server", {}), "admin_token": "${ADMIN_TOKEN}"}
    token = "0123456789abcdef0123456789abcdef"
    env = {**os.environ, "ADMIN_TOKEN": token}
    with running_gateway(config, tmp_path, env=env) as gateway:
        reload_url = f"{gateway.admin_url}/admin/reload"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(reload_url, method="POST"), timeout=5)
        assert refused.value.code == 401
        refused.value.close()  # it holds the connection
        request = urllib.request.Request(
            reload_url, method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert json.loads(reply.read())["status"] == "reloaded"
        assert http_get(f"{gateway.admin_url}/readyz")[0] == 200
        assert http_get(f"{gateway.admin_url}/metrics")[0] == 200


def test_bad_config_reload_is_refused_and_old_config_serves(reloadable: Gateway) -> None:
    """A reload to an invalid file is refused with its message and the old routes keep serving."""
    good = reloadable.path.read_text()
    reloadable.path.write_text(good.replace("upstream: up", "upstream: nope"))
    reloadable.signal(signal.SIGHUP)
    assert wait_until(lambda: "no upstream named 'nope'" in reloadable.output())
    assert "config reload refused" in reloadable.output()
    assert [fetch(reloadable, "/v1").status for _ in range(5)] == [200] * 5
    request = f"{reloadable.admin_url}/admin/reload"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(request, method="POST"), timeout=5)
    assert refused.value.code == 400
    assert b"no upstream named 'nope'" in refused.value.read()
    refused.value.close()  # it holds the connection
    assert fetch(reloadable, "/v1").status == 200


def test_inflight_request_survives_a_reload(
    reloadable: Gateway, scripted: ScriptedUpstream
) -> None:
    """A slow request that started before a reload (which replaces its upstream) completes 200."""
    scripted.reset(slow_handler(1.0))
    thread, result = in_background(reloadable)
    assert wait_until(lambda: scripted.requests)
    config = gateway_config(
        {"up": upstream(scripted.url, read_timeout_s=7)},
        [route("r", "up", path_prefix="/v1"), route("new", "up", path_prefix="/v3")],
    )
    config["server"] = reloadable.config["server"]
    reloadable.write_config(config)
    reloadable.signal(signal.SIGHUP)
    scripted.handler = echo
    assert wait_until(lambda: fetch(reloadable, "/v3").status == 200)
    assert not result, "the slow request finished before the reload took effect"
    thread.join(10)
    assert result == [200]


def test_helper_picks_a_port_again_when_it_was_taken_before_the_bind(
    scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    """The test Gateway's own port pick can lose a race (an ephemeral port of an outgoing
    connection, say): apigate refuses to start, and the helper picks again and starts."""
    gateway = Gateway(config_for(scripted), tmp_path)
    taken = gateway.admin_port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        gateway.start()
        try:
            assert gateway.admin_port != taken
            assert "address already in use" in gateway.output()
            assert fetch(gateway).status == 200
        finally:
            gateway.stop()

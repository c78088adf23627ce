"""A worker process: one uvloop event loop serving the data plane on a SO_REUSEPORT socket.

Signals: SIGHUP reloads the config (a bad file is refused and the old snapshot stays);
SIGTERM keeps serving for ``drain_delay_s``, stops accepting, lets in-flight requests finish
within ``shutdown_grace_s``, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time

import uvloop

from apigate.config import ConfigError, load_config
from apigate.config.model import Config, ServerConfig
from apigate.config.types import HostPort, parse_host_port
from apigate.gateway import Gateway
from apigate.http.server import ConnectionTracker, HttpConnection, Limits
from apigate.observability.logging import configure_logging
from apigate.observability.metrics import Metrics, MetricsSink, NullMetrics
from apigate.runtime import Runtime, build_runtime, retired_upstreams

log = logging.getLogger("apigate.worker")


def limits_of(server: ServerConfig) -> Limits:
    return Limits(
        max_header_bytes=server.max_header_bytes,
        max_body_bytes=server.max_body_bytes,
        header_timeout_s=server.header_timeout_s,
        keepalive_timeout_s=server.keepalive_timeout_s,
        max_connections=server.max_connections,
    )


def listen_socket(address: HostPort) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT, so every worker can bind the same port."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Worker:
    """Owns the listener, the gateway and the current runtime snapshot of one process."""

    def __init__(self, config_path: str, config: Config) -> None:
        self._path = config_path
        self._config = config
        self._metrics: MetricsSink = Metrics() if config.observability.metrics else NullMetrics()
        self._instance_id = f"{socket.gethostname()}:{os.getpid()}"
        runtime = build_runtime(config, metrics=self._metrics, instance_id=self._instance_id)
        self.gateway = Gateway(runtime)
        self.tracker = ConnectionTracker(
            limits_of(config.server), self.gateway.handle, self.gateway.head_start_hook()
        )
        self.tracker.on_open = self._metrics.connection_opened
        self.tracker.on_close = self._metrics.connection_closed
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[bool] | None = None

    async def serve(self, ready_fd: int | None) -> None:
        loop = asyncio.get_running_loop()
        runtime = self.gateway.runtime
        await runtime.limiter.start()
        await runtime.auth.start()
        sock = listen_socket(self._config.server.listen)
        server = await loop.create_server(lambda: HttpConnection(self.tracker), sock=sock)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        if ready_fd is not None:
            os.write(ready_fd, f"{os.getpid()}\n".encode())
        log.info("worker listening", extra={"listen": str(self._config.server.listen)})
        await self._stop.wait()
        await self._shutdown(server)

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Load the file again and swap the snapshot; keep the old one if the file is bad."""
        try:
            config = await asyncio.to_thread(load_config, self._path)
        except ConfigError as exc:
            log.error("config reload refused: %s", exc)
            self._metrics.config_reload(False)
            return False
        old = self.gateway.runtime
        try:
            new = build_runtime(
                config, metrics=self._metrics, instance_id=self._instance_id, previous=old
            )
        except Exception as exc:
            log.error("config reload refused: %s", exc)
            self._metrics.config_reload(False)
            return False
        if config.observability.log_level != self._config.observability.log_level:
            configure_logging(config.observability.log_level)
        await new.limiter.start()
        await new.auth.start()
        self.gateway.runtime = new
        self.tracker.limits = limits_of(config.server)
        self.tracker.head_start = self.gateway.head_start_hook()
        self._config = config
        for upstream in retired_upstreams(old, new):
            upstream.retire()
        if old.config.storage != config.storage:
            asyncio.get_running_loop().call_later(
                config.server.shutdown_grace_s, _close_later, old
            )
        else:
            await old.auth.aclose()  # releases its share of the consumer poller new.auth kept
        self._metrics.config_reload(True)
        log.info("config reloaded")
        return True

    async def _shutdown(self, server: asyncio.Server) -> None:
        server_config = self._config.server
        log.info("draining", extra={"drain_delay_s": server_config.drain_delay_s})
        self.tracker.draining = True
        await asyncio.sleep(server_config.drain_delay_s)
        server.close()
        for conn in self.tracker.idle_connections():
            conn.close()
        deadline = time.monotonic() + server_config.shutdown_grace_s
        while self.tracker.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            for conn in self.tracker.idle_connections():
                conn.close()
        for conn in list(self.tracker.connections):
            conn.close()
        runtime = self.gateway.runtime
        runtime.access_log.flush()
        self._metrics.flush()
        for upstream in runtime.upstreams.values():
            upstream.close()
        await runtime.auth.aclose()
        await runtime.limiter.aclose()
        log.info("worker stopped")


_CLOSING: set[asyncio.Task[None]] = set()


def _close_later(runtime: Runtime) -> None:
    """Close a replaced snapshot's storage once its in-flight requests have had their grace."""
    loop = asyncio.get_running_loop()
    for closer in (runtime.limiter.aclose(), runtime.auth.aclose()):
        task = loop.create_task(closer)
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)


def tune_gc() -> None:
    """Fewer cyclic-GC passes on the request path.

    Requests allocate many short-lived objects and almost no cycles, yet the default gen-0
    threshold (700) ran a collection every few requests (7% of a worker's CPU in a profile).
    Everything built at start-up is frozen out of the collector's view.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apigate-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--ready-fd", type=int, default=None)
    # Restart-only settings as the instance started (the file may have changed since).
    parser.add_argument("--listen", type=parse_host_port, default=None)
    parser.add_argument("--metrics", choices=("on", "off"), default=None)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, flush=True)
        return 1
    if args.listen is not None:
        server = config.server.model_copy(update={"listen": args.listen})
        config = config.model_copy(update={"server": server})
    if args.metrics is not None:
        observability = config.observability.model_copy(update={"metrics": args.metrics == "on"})
        config = config.model_copy(update={"observability": observability})
    configure_logging(config.observability.log_level)

    async def run() -> None:
        worker = Worker(args.config, config)
        tune_gc()
        await worker.serve(args.ready_fd)

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The supervisor: spawns and restarts workers, owns the admin plane, turns signals into
reloads and drains.

Shutdown reads top-down: mark not ready, tell workers to drain (they keep serving for
``drain_delay_s``, then stop accepting and finish in-flight requests), wait, close the admin
plane and storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from contextlib import AsyncExitStack

from apigate.admin import consumers_api, ratelimit_api
from apigate.admin.server import AdminServer, default_dashboard
from apigate.admin.types import AdminRequest, AdminResponse, AdminRoute
from apigate.config import Config, ConfigError, load_config
from apigate.cpus import usable_cpus
from apigate.observability import metrics as metrics_module
from apigate.observability.logging import configure_logging
from apigate.observability.metrics import NullMetrics
from apigate.runtime import Runtime, build_runtime
from apigate.worker import listen_socket

log = logging.getLogger("apigate.supervisor")

RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class WorkerProcess:
    __slots__ = ("index", "process", "ready", "restarts", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restarts = 0
        self.started = 0.0


def worker_count(config: Config, override: int | None) -> int:
    if override is not None:
        return override
    workers = config.server.workers
    return usable_cpus() if workers == "auto" else int(workers)


class Supervisor:
    def __init__(
        self, config_path: str, config: Config, *, workers: int | None, watch: bool = False
    ) -> None:
        self._path = config_path
        self._watch_config = watch
        self._config = config
        self._bound = config  # as the process started: what restart-only settings stay at
        self._count = worker_count(config, workers)
        self._workers = [WorkerProcess(i) for i in range(self._count)]
        self._draining = False
        self._stopping = asyncio.Event()
        self._metrics_dir: str | None = None
        self._runtime: Runtime | None = None  # storage and consumers for the admin API
        self._ready_r = -1
        self._ready_w = -1
        self._admin: AdminServer | None = None
        self.exit_code = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            if self._config.observability.metrics:
                self._metrics_dir = metrics_module.setup_multiprocess_dir()
                stack.callback(metrics_module.cleanup_multiprocess_dir, self._metrics_dir)
            self._runtime = build_runtime(
                self._config, metrics=NullMetrics(), instance_id=f"{socket.gethostname()}:admin"
            )
            stack.push_async_callback(self._close_runtime)
            await self._runtime.auth.start()
            self._ready_r, self._ready_w = os.pipe()
            os.set_blocking(self._ready_r, False)
            loop.add_reader(self._ready_r, self._on_ready_line)
            stack.callback(self._close_pipe)
            self._admin = self._build_admin()
            admin = self._config.server.admin_listen
            await self._admin.start(admin.host, admin.port)
            stack.push_async_callback(self._admin.close)
            for worker in self._workers:
                await self._spawn(worker)
            loop.add_signal_handler(signal.SIGTERM, self._begin_shutdown)
            loop.add_signal_handler(signal.SIGINT, self._begin_shutdown)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
            if self._watch_config:
                watcher = loop.create_task(self._watch_file())
                stack.callback(watcher.cancel)
            log.info("apigate started", extra={"workers": self._count,
                                              "listen": str(self._config.server.listen)})
            await self._stopping.wait()
            await self._drain_workers()
        return self.exit_code

    # -- workers ----------------------------------------------------------------------------

    async def _spawn(self, worker: WorkerProcess) -> None:
        worker.ready = False
        worker.started = time.monotonic()
        bound = self._bound
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apigate.worker",
            "--config", self._path, "--ready-fd", str(self._ready_w),
            # A worker restarted after a reload keeps what the instance started with.
            "--listen", str(bound.server.listen),
            "--metrics", "on" if bound.observability.metrics else "off",
            pass_fds=(self._ready_w,),
        )
        asyncio.get_running_loop().create_task(self._watch(worker, worker.process))

    async def _watch(self, worker: WorkerProcess, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        worker.ready = False
        metrics_module.worker_exited(process.pid)
        if self._draining or self._stopping.is_set():
            return
        log.error("worker exited; restarting", extra={"worker": worker.index, "code": code})
        if time.monotonic() - worker.started > 30:
            worker.restarts = 0
        delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
        worker.restarts += 1
        await asyncio.sleep(delay)
        if not self._draining:
            await self._spawn(worker)

    def _on_ready_line(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self._ready_r, 4096)
            for line in data.split():
                pid = int(line)
                for worker in self._workers:
                    if worker.process is not None and worker.process.pid == pid:
                        worker.ready = True

    def _signal_workers(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    # -- reload and shutdown ----------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        """Validate the file; if good, every worker reloads it; if bad, nothing changes."""
        try:
            config = await asyncio.to_thread(load_config, self._path)
        except ConfigError as exc:
            log.error("config reload refused: %s", exc)
            return False, str(exc)
        old = self._runtime
        try:
            self._runtime = build_runtime(
                config, metrics=NullMetrics(), instance_id=f"{socket.gethostname()}:admin",
                previous=old,
            )
        except ConfigError as exc:  # as the workers refuse it: nothing changes
            log.error("config reload refused: %s", exc)
            return False, str(exc)
        await self._runtime.auth.start()
        if old is not None:
            await old.auth.aclose()
            if old.limiter is not self._runtime.limiter and old.config.storage != config.storage:
                await old.limiter.aclose()
        if config.observability.log_level != self._config.observability.log_level:
            configure_logging(config.observability.log_level)
        later = restart_only_changes(self._bound, config)
        self._config = config
        if self._admin is not None:
            self._admin.token = config.server.admin_token  # for the requests after this one
        self._signal_workers(signal.SIGHUP)
        log.info("config reloaded")
        if later:
            message = f"reloaded; takes effect after a restart: {', '.join(later)}"
            log.warning(message)
            return True, message
        return True, "reloaded"

    async def _watch_file(self, interval_s: float = 1.0) -> None:
        """Reload when the file's mtime or size changes (``apigate run --watch``)."""

        def stamp() -> tuple[float, int] | None:
            try:
                info = os.stat(self._path)
            except OSError:
                return None
            return info.st_mtime, info.st_size

        last = await asyncio.to_thread(stamp)
        while True:
            await asyncio.sleep(interval_s)
            current = await asyncio.to_thread(stamp)
            if current is not None and current != last:
                last = current
                await self.reload()

    def _begin_shutdown(self) -> None:
        if self._draining:
            return
        log.info("SIGTERM: readiness off, draining")
        self._draining = True
        self._signal_workers(signal.SIGTERM)
        self._stopping.set()

    async def _drain_workers(self) -> None:
        server = self._config.server
        deadline = time.monotonic() + server.drain_delay_s + server.shutdown_grace_s + 5
        for worker in self._workers:
            process = worker.process
            if process is None or process.returncode is not None:
                continue
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await process.wait()
            except TimeoutError:
                log.error("worker did not stop in time; killing", extra={"worker": worker.index})
                process.kill()
                await process.wait()

    async def _close_runtime(self) -> None:
        if self._runtime is not None:
            await self._runtime.auth.aclose()
            await self._runtime.limiter.aclose()

    def _close_pipe(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._ready_r)
        os.close(self._ready_r)
        os.close(self._ready_w)

    # -- admin plane ------------------------------------------------------------------------

    def _build_admin(self) -> AdminServer:
        async def usage(policy: str, key: str) -> dict[str, object]:
            with ratelimit_api.admin_errors(policy):  # storage down: 503, as for a key
                return await self._current().limiter.usage(policy, key)

        async def reset(policy: str, key: str) -> None:
            with ratelimit_api.admin_errors(policy):
                await self._current().limiter.reset(policy, key)

        routes: list[AdminRoute] = [("POST", "/admin/reload", self._admin_reload)]
        routes += ratelimit_api.admin_routes(lambda: self._current().limiter)
        routes += consumers_api.admin_routes(lambda: self._current().auth, usage, reset)
        admin = AdminServer(
            routes,
            health=lambda: True,
            ready=self._ready,
            metrics=metrics_module.render_metrics if self._config.observability.metrics else None,
            dashboard_html=default_dashboard(),
        )
        admin.token = self._config.server.admin_token
        return admin

    def _current(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the admin plane runs only after the runtime is built")
        return self._runtime

    async def _admin_reload(self, request: AdminRequest) -> AdminResponse:
        ok, message = await self.reload()
        if ok:
            reply = {"status": "reloaded"}
            if message != "reloaded":
                reply["detail"] = message  # settings that wait for a restart
            return AdminResponse.of(reply)
        return AdminResponse.of({"error": "config refused", "detail": message}, status=400)

    async def _ready(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        missing = sum(1 for w in self._workers if not w.ready)
        if missing:
            return False, f"{missing} of {self._count} workers not ready"
        assert self._runtime is not None
        # A dead Redis makes the instance unready only when the config says to refuse
        # traffic without it; with `open` or `local` every instance would otherwise leave
        # the load balancer at once and the failure mode would never apply.
        closed = self._config.storage.on_failure == "closed"
        if closed and not await self._current().limiter.ping():
            return False, "rate-limit storage unreachable"
        return True, "ready"


def check_listen(config: Config) -> None:
    """Fail fast, in the supervisor, when the data-plane port cannot be bound."""
    listen_socket(config.server.listen).close()


# Settings bound when the process starts (sockets, process count, the metrics sink): a reload
# that changes them is applied otherwise, and says they wait for a restart.
_RESTART_ONLY = (
    ("server", "listen"), ("server", "admin_listen"), ("server", "workers"),
    ("observability", "metrics"),
)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The dotted names of settings ``new`` changes that only a restart applies."""
    return [
        f"{section}.{name}" for section, name in _RESTART_ONLY
        if getattr(getattr(old, section), name) != getattr(getattr(new, section), name)
    ]

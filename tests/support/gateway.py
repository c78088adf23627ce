"""Start real ``apigate run`` processes (and small upstreams) for integration tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def apigate_executable() -> list[str]:
    """The installed console script (tests run the installed package, not the tree)."""
    script = shutil.which("apigate", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "apigate.cli"]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            return exc.code, exc.read()


class Gateway:
    """One ``apigate run`` process: its ports, config file, output and signals."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, *, workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = env  # the process environment (None: this one's), for ${VAR} in configs
        self.port = free_port()
        self.admin_port = free_port()
        server = dict(config.get("server", {}))
        # Ports this helper picked (not the caller): picked again if taken before the bind.
        self._picked = {"listen", "admin_listen"} - set(server)
        server.setdefault("listen", f"127.0.0.1:{self.port}")
        server.setdefault("admin_listen", f"127.0.0.1:{self.admin_port}")
        server.setdefault("drain_delay_s", 0)
        server.setdefault("workers", workers)
        self.config = {**config, "server": server}
        self.path = workdir / f"apigate-{self.port}.yaml"
        self.log_path = workdir / f"apigate-{self.port}.log"
        self.write_config(self.config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until ready. A port picked here that another process took between
        the pick and the bind (an outgoing connection's ephemeral port, say) is picked again."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2 or not self._picked:
                    raise
                self._pick_ports_again()

    def _pick_ports_again(self) -> None:
        server = dict(self.config["server"])
        if "listen" in self._picked:
            self.port = free_port()
            server["listen"] = f"127.0.0.1:{self.port}"
        if "admin_listen" in self._picked:
            self.admin_port = free_port()
            server["admin_listen"] = f"127.0.0.1:{self.admin_port}"
        self.config = {**self.config, "server": server}
        self.write_config(self.config)

    def _start_once(self, timeout: float) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*apigate_executable(), "run", "--config", str(self.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"apigate exited early:\n{self.output()}")
            try:
                status, _ = http_get(f"{self.admin_url}/readyz", timeout=0.5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"apigate not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(5)


@contextmanager
def running_gateway(
    config: dict[str, Any], workdir: Path, *, workers: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[Gateway]:
    gateway = Gateway(config, workdir, workers=workers, env=env)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@contextmanager
def demo_upstream(port: int | None = None, name: str = "demo") -> Iterator[int]:
    """The built-in JSON echo upstream in its own process; yields its port."""
    port = port or free_port()
    code = (
        "import asyncio, uvloop\n"
        "from apigate.demo import serve_demo\n"
        "async def main():\n"
        f"    server = await serve_demo('127.0.0.1', {port}, {name!r})\n"
        "    await server.serve_forever()\n"
        "uvloop.run(main())\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(5)

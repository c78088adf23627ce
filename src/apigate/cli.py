"""The ``apigate`` command: run, check, schema, hash-key, version."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys

from apigate import __version__
from apigate.config import ConfigError, json_schema, load_config
from apigate.config.loader import memory_workers_problem
from apigate.config.types import parse_host_port


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from apigate.observability.logging import configure_logging
    from apigate.supervisor import Supervisor, check_listen

    path = args.config or os.environ.get("APIGATE_CONFIG")
    if not path:
        print("apigate run: give --config FILE or set APIGATE_CONFIG", file=sys.stderr)
        return 2
    try:
        config = load_config(path)
        if args.workers is not None and config.storage.url.startswith("memory:"):
            problem = memory_workers_problem(args.workers) if config.rate_limits else None
            if problem:
                raise ConfigError(path, [("storage.url", f"{problem} (--workers)")])
        check_listen(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{path}: server.listen: cannot bind {config.server.listen}: {exc.strerror}",
              file=sys.stderr)
        return 1
    configure_logging(config.observability.log_level)

    async def main() -> int:
        if args.demo_upstream:
            from apigate.demo import serve_demo

            address = parse_host_port(args.demo_upstream)
            await serve_demo(address.host, address.port)
        supervisor = Supervisor(path, config, workers=args.workers, watch=args.watch)
        return await supervisor.run()

    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(main())
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0



def _worker_count(text: str) -> int:
    """``--workers``: the same range as ``server.workers`` (argparse names the option)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError("workers must be between 1 and 256")
    return count

def _hash_key(args: argparse.Namespace) -> int:
    from apigate.auth.api_key import hash_key

    raw = args.key if args.key is not None else getpass.getpass("API key: ")
    if not raw:
        print("apigate hash-key: the key is empty", file=sys.stderr)
        return 1
    print(hash_key(raw))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apigate", description="A clustered API gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway (supervisor + workers)")
    run.add_argument("--config", help="config file (default: $APIGATE_CONFIG)")
    run.add_argument("--workers", type=_worker_count,
                     help="worker processes, 1 to 256 (overrides server.workers)")
    run.add_argument("--watch", action="store_true",
                     help="reload when the config file changes (as SIGHUP does)")
    run.add_argument("--demo-upstream", metavar="HOST:PORT",
                     help="also serve a small JSON echo upstream here (for trying apigate out)")
    run.set_defaults(func=_run)
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=_check)
    schema = sub.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=lambda _: print(json_schema()) or 0)
    hash_key = sub.add_parser("hash-key", help="print the sha256:<hex> form of an API key")
    hash_key.add_argument("key", nargs="?", help="the key (prompted for when omitted)")
    hash_key.set_defaults(func=_hash_key)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _: print(__version__) or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

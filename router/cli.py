"""``router``: the command line (serve, demo-models)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from .config import load_config, parse_address
from .errors import ConfigError, RouterError

log = logging.getLogger("router")


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("ROUTER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)-5s %(name)s[%(process)d] %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from .framing import EXTENSION
    from .server import Server

    try:
        config = load_config(args.config)
        server_cfg = config.server
        if args.http is not None:
            server_cfg = dataclasses.replace(server_cfg, http=parse_address(args.http, "--http"))
        if args.msgpack is not None:
            server_cfg = dataclasses.replace(server_cfg, msgpack=parse_address(args.msgpack, "--msgpack"))
        config = dataclasses.replace(config, server=server_cfg)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    log.info("config %s; compiled extensions: %s", config.source, "yes" if EXTENSION else "no (pure Python)")

    async def main() -> None:
        await Server(config).run()

    try:
        uvloop.run(main())
    except (RouterError, OSError) as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


def cmd_demo_models(args: argparse.Namespace) -> int:
    from runtime.demo import main as demo_main  # imports torch: only this command pays for it

    argv = ["--store", args.store] if args.store else []
    if args.store is None:
        try:
            argv = ["--store", str(load_config(args.config).store_path)]
        except ConfigError as exc:
            log.error("invalid configuration: %s", exc)
            return 2
    if args.extra:
        argv.append("--extra")
    return demo_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router", description="model-router: serve TorchScript models behind one "
                                "endpoint per model, with traffic splits between versions")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", default="config.toml", help="config file (default: %(default)s)")
    s.add_argument("--http", metavar="HOST:PORT", help="override server.http ('' disables)")
    s.add_argument("--msgpack", metavar="HOST:PORT", help="override server.msgpack ('' disables)")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo-models", help="train the demo models into the store (idempotent)")
    d.add_argument("--config", default="config.toml", help="config whose store.path to use")
    d.add_argument("--store", help="store directory (overrides the config)")
    d.add_argument("--extra", action="store_true", help="also write the benchmark MLPs")
    d.set_defaults(func=cmd_demo_models)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""``router``: the command line (serve, demo-models, package, push, traffic, shadow, reload, deploy, rollback, status).

Every command but ``serve``, ``demo-models`` and ``package`` calls the admin API, sending
``ROUTER_ADMIN_TOKEN`` as a bearer token when it is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any

from .admin import TOKEN_ENV, USER_HEADER, check_bind, resolve_token
from .config import load_config, parse_address
from .proto.errors import ConfigError, RouterError
from .results import (
    AuditResult,
    PushedVersion,
    ReleasedPool,
    ReloadResult,
    RemovedVersion,
    RolloutResult,
    StatusResult,
    SwapResult,
    TrafficResult,
    VersionsResult,
)

log = logging.getLogger("router")

Result = (TrafficResult | ReloadResult | SwapResult | StatusResult | RolloutResult | VersionsResult | RemovedVersion
          | AuditResult | ReleasedPool)


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("ROUTER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)-5s %(name)s[%(process)d] %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from . import splitter
    from .proto import framing
    from .server import Server

    try:
        config = load_config(args.config)
        server_cfg = config.server
        if args.http is not None:
            server_cfg = dataclasses.replace(server_cfg, http=parse_address(args.http, "--http"))
        if args.msgpack is not None:
            server_cfg = dataclasses.replace(server_cfg, msgpack=parse_address(args.msgpack, "--msgpack"))
        config = dataclasses.replace(config, server=server_cfg)
        token = resolve_token(config)
        check_bind(config.server.http, token)
        check_bind(config.server.admin_http, token, "server.admin_http")
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    compiled = [name for name, mod in (("framing", framing), ("splitter", splitter)) if mod.EXTENSION]
    log.info("config %s; compiled extensions: %s", config.source, ", ".join(compiled) or "none (pure Python)")

    async def main() -> None:
        await Server(config, admin_token=token).run()

    try:
        uvloop.run(main())
    except (RouterError, OSError) as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


def cmd_demo_models(args: argparse.Namespace) -> int:
    from modelkit.demo import main as demo_main  # imports torch: only this command pays for it

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


def cmd_package(args: argparse.Namespace) -> int:
    from modelkit.package import package_file  # imports torch: only this command pays for it

    try:
        out = package_file(args.model_file, args.example, args.output, name=args.name,
                           description=args.description, reference_sample=args.sample)
    except (ConfigError, OSError) as exc:
        log.error("cannot package %s: %s", args.model_file, exc)
        return 1
    print(out)
    return 0


def _admin_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    s = load_config(args.config).server
    address = s.admin_http or s.http  # the admin listener, where there is one: a flood on http never locks it
    if address is None:
        raise ConfigError("server.http is disabled in the config: pass --url")
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
    return f"http://{host}:{address.port}"


def _user() -> str:
    """Who runs the CLI, for the audit trail (the login name; the token, not this, is what authorises)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        return f"uid {os.getuid()}"


def _admin_call(args: argparse.Namespace, method: str, path: str, body: object = None) -> Any:
    """One admin API call; returns the decoded JSON or raises RouterError with the server's message."""
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", USER_HEADER: _user()}
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(_admin_url(args) + path, data=data, method=method, headers=headers)
    try:
        # A deploy answers once every worker of the new pool has loaded and warmed up: allow it its time.
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        raise RouterError(f"{e.code}: {message}", e.code) from None
    except urllib.error.URLError as e:
        raise RouterError(f"cannot reach the router at {_admin_url(args)}: {e.reason}") from None


#: Files over this size get a progress bar on stderr while they are pushed.
_PROGRESS_BYTES = 8 << 20
_PUSH_BLOCK = 1 << 20


def _push_file(args: argparse.Namespace, path: str, size: int) -> Any:
    """Stream ``path`` to the push endpoint in blocks, with its Content-Length; returns the decoded JSON.

    Raises:
        RouterError: the server's error (status and message), or the router cannot be reached.
    """
    import http.client
    import json
    import urllib.parse

    url = urllib.parse.urlsplit(_admin_url(args))
    query = urllib.parse.urlencode({"description": args.description}) if args.description is not None else ""
    target = (f"{url.path.rstrip('/')}/admin/models/{urllib.parse.quote(args.model, safe='')}/versions/"
              f"{urllib.parse.quote(args.version, safe='')}" + (f"?{query}" if query else ""))
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    # The validation loads the model and runs its example in a fresh process: allow it its time.
    conn = conn_cls(url.hostname or "127.0.0.1", url.port, timeout=600)
    show = size > _PROGRESS_BYTES and sys.stderr.isatty()  # no \r-redrawn lines in a log
    try:
        conn.putrequest("POST", target)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.putheader(USER_HEADER, _user())
        token = os.environ.get(TOKEN_ENV, "").strip()
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        sent = 0
        try:
            with open(path, "rb") as f:
                while block := f.read(_PUSH_BLOCK):
                    conn.send(block)
                    sent += len(block)
                    if show:
                        _progress(sent, size)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the router refused early (413, 400...): its answer says why
        if show:
            sys.stderr.write("\n" if sent >= size else " (refused)\n")
        r = conn.getresponse()
        data = r.read()
    except OSError as exc:
        raise RouterError(f"cannot push to the router at {_admin_url(args)}: {exc}") from None
    finally:
        conn.close()
    try:
        body = json.loads(data)
    except ValueError:
        raise RouterError(f"{r.status}: {data[:200]!r}", r.status) from None
    if r.status >= 400:
        raise RouterError(f"{r.status}: {body.get('error') if isinstance(body, dict) else body}", r.status)
    return body


def _progress(sent: int, size: int) -> None:
    width = 30
    done = width * sent // size
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {100 * sent // size:3d}% "
                     f"{sent >> 20}/{size >> 20} MiB")
    sys.stderr.flush()


def cmd_push(args: argparse.Namespace) -> int:
    try:
        size = os.stat(args.file).st_size
    except OSError as exc:
        log.error("cannot read %s: %s", args.file, exc.strerror)
        return 2
    try:
        res = PushedVersion.from_json(_push_file(args, args.file, size))
    except (RouterError, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    print(res.text())
    return 0


def _pairs(items: list[str], what: str) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for item in items:
        version, sep, w = item.partition("=")
        try:
            if not sep or not version:
                raise ValueError
            out[version] = float(w)
        except ValueError:
            log.error("expected VERSION=%s, got %r", what, item)
            return None
    return out


def cmd_traffic(args: argparse.Namespace) -> int:
    """``traffic`` (field ``weights``) and ``shadow`` (field ``shadow``): set the named versions, or show."""
    values = _pairs(args.values, args.unit)
    if values is None:
        return 2
    if values:
        return _render(TrafficResult, args, "PUT", f"/admin/models/{args.model}/traffic", {args.field: values})
    return _render(TrafficResult, args, "GET", f"/admin/models/{args.model}/traffic")


def cmd_reload(args: argparse.Namespace) -> int:
    return _render(ReloadResult, args, "POST", "/admin/reload", {})


def cmd_deploy(args: argparse.Namespace) -> int:
    import json

    try:
        text = sys.stdin.read() if args.versions == "-" else open(args.versions).read()
        doc = json.loads(text)
    except (OSError, ValueError) as exc:
        log.error("cannot read the version set from %s: %s", args.versions, exc)
        return 2
    versions = doc["versions"] if isinstance(doc, dict) and "versions" in doc else doc
    return _render(SwapResult, args, "POST", f"/admin/models/{args.model}/deploy", {"versions": versions})


def cmd_rollback(args: argparse.Namespace) -> int:
    return _render(SwapResult, args, "POST", f"/admin/models/{args.model}/rollback", {})


def _version_path(args: argparse.Namespace, tail: str = "") -> str:
    from urllib.parse import quote

    return f"/admin/models/{quote(args.model, safe='')}/versions/{quote(args.version, safe='')}{tail}"


def _settings(items: list[str]) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs, each value read as TOML (``2``, ``"cuda:0"``, ``[0, 1]``) or else as a string."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            log.error("expected KEY=VALUE (a [[models.versions]] key), got %r", item)
            return None
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def cmd_rollout(args: argparse.Namespace) -> int:
    settings = _settings(args.set)
    if settings is None:
        return 2
    body: dict[str, Any] = {k: getattr(args, k) for k in ("weight", "percent", "shadow")
                            if getattr(args, k) is not None}
    if settings:
        body["settings"] = settings
    return _render(RolloutResult, args, "POST", _version_path(args, "/rollout"), body)


def cmd_drop(args: argparse.Namespace) -> int:
    return _render(SwapResult, args, "POST", _version_path(args, "/drop"), {})


def cmd_versions(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    return _render(VersionsResult, args, "GET", f"/admin/models/{quote(args.model, safe='')}/versions")


def cmd_rm(args: argparse.Namespace) -> int:
    return _render(RemovedVersion, args, "DELETE", _version_path(args))


def cmd_status(args: argparse.Namespace) -> int:
    return _render(StatusResult, args, "GET", "/admin/models")


def cmd_release(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    return _render(ReleasedPool, args, "POST", f"/admin/models/{quote(args.model, safe='')}/release", {})


def cmd_audit(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    query = {"limit": args.limit, **({"model": args.model} if args.model else {})}
    return _render(AuditResult, args, "GET", f"/admin/audit?{urlencode(query)}")


def _render(result: type[Result], args: argparse.Namespace, method: str, path: str, body: object = None) -> int:
    """One admin API call, its result printed as text (the control plane's result, rebuilt from its JSON)."""
    try:
        res = result.from_json(_admin_call(args, method, path, body))
    except (RouterError, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    print(res.text())
    return 0


def _admin_args(c: argparse.ArgumentParser, *positional: str) -> argparse.ArgumentParser:
    """The positionals of an admin command, and where to find the router."""
    for name in positional:
        c.add_argument(name)
    c.add_argument("--config", default="config.toml", help="config whose server.http to call")
    c.add_argument("--url", help="router base URL (default: from the config)")
    return c


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

    k = sub.add_parser("package", help="pack a saved model (.pt or .pt2) and its meta.json into one archive")
    k.add_argument("model_file", metavar="MODEL_FILE", help="torch.jit.save .pt or torch.export.save .pt2 file")
    k.add_argument("--example", required=True, metavar="EXAMPLE.npz", help="example inputs (np.savez), by name")
    k.add_argument("-o", "--output", required=True, metavar="OUT", help="archive to write: .tar.gz, .tgz or .zip")
    k.add_argument("--name", help="model name for meta.json")
    k.add_argument("--description", help="free text for meta.json")
    k.add_argument("--sample", metavar="SAMPLE.npz", help="reference inputs for drift monitoring (sample.npz)")
    k.set_defaults(func=cmd_package)
    u = sub.add_parser("push", help="push a model version (a package archive or a bare .pt/.pt2) into the store")
    u.add_argument("model")
    u.add_argument("version")
    u.add_argument("file", metavar="FILE", help="archive from `router package` (.tar.gz, .zip) or a model file")
    u.add_argument("--description", help="meta.json description, where the archive gives none")
    u.add_argument("--config", default="config.toml", help="config whose server.http to call")
    u.add_argument("--url", help="router base URL (default: from the config)")
    u.set_defaults(func=cmd_push)
    r = sub.add_parser("rollout", help="put a stored version into the model's active set (blue-green; a model "
                       "not served yet is started)")
    _admin_args(r, "model", "version")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--percent", type=float, help="its share of live traffic; the other live versions share "
                       "the rest in their proportions")
    where.add_argument("--weight", type=float, help="its weight, relative to the others' (which keep theirs)")
    where.add_argument("--shadow", type=float, metavar="FRACTION", help="mirror this fraction of live traffic "
                       "to it (replies still come from the live versions)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another [[models.versions]] key for it, e.g. replicas=2 (repeatable)")
    r.set_defaults(func=cmd_rollout)
    _admin_args(sub.add_parser("drop", help="take a version out of the model's active set (blue-green; it stays "
                               "stored)"), "model", "version").set_defaults(func=cmd_drop)
    _admin_args(sub.add_parser("versions", help="list a model's stored versions: state, size, metadata"),
                "model").set_defaults(func=cmd_versions)
    _admin_args(sub.add_parser("rm", help="delete a stored version (refused while a pool holds it)"),
                "model", "version").set_defaults(func=cmd_rm)
    a = _admin_args(sub.add_parser("audit", help="the changes made through the admin API, newest first: who, "
                                   "what, when, and how each ended"))
    a.add_argument("--model", help="only this model's")
    a.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    a.set_defaults(func=cmd_audit)
    for name, func, help_ in (("traffic", cmd_traffic, "show or set a model's traffic weights"),
                              ("shadow", cmd_traffic, "show or set the fraction of live traffic mirrored to "
                               "shadow versions"),
                              ("reload", cmd_reload, "re-read the daemon's config file and apply what changed"),
                              ("deploy", cmd_deploy, "deploy a new version set of a model, blue-green"),
                              ("rollback", cmd_rollback, "make a model's previous (warm) pool active again"),
                              ("release", cmd_release, "stop a model's previous (warm) pool now: no rollback to "
                               "it afterwards, and its versions can be removed"),
                              ("status", cmd_status, "show models, versions, weights and workers")):
        c = sub.add_parser(name, help=help_)
        if name in ("traffic", "shadow", "deploy", "rollback", "release"):
            c.add_argument("model")
        if name == "deploy":
            c.add_argument("versions", metavar="FILE",
                           help='JSON list of versions (keys as in config.toml), or {"versions": [...]}; - for stdin')
        elif name == "traffic":
            c.add_argument("values", nargs="*", metavar="VERSION=WEIGHT", help="e.g. 1=80 2=20; none: show")
            c.set_defaults(field="weights", unit="WEIGHT")
        elif name == "shadow":
            c.add_argument("values", nargs="*", metavar="VERSION=FRACTION",
                           help="e.g. 3=0.5 (0 stops mirroring; the version must have weight 0); none: show")
            c.set_defaults(field="shadow", unit="FRACTION")
        c.add_argument("--config", default="config.toml", help="config whose server.http to call")
        c.add_argument("--url", help="router base URL (default: from the config)")
        c.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

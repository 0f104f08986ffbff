"""Shared fixtures: a demo model store and real daemons on free loopback ports.

Every daemon is a real ``router serve`` process with real worker processes and
real TorchScript models; teardown checks that no process is left behind.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router import _splitter_py

try:
    from router import _splitter_c
except ImportError:  # only acceptable when the twins are forced
    _splitter_c = None

ROOT = Path(__file__).resolve().parent.parent
#: The splitter implementations present: the twin always, the extension when built.
IMPLS = [pytest.param(_splitter_py, id="py")]
if _splitter_c is not None:
    IMPLS.append(pytest.param(_splitter_c, id="c"))
BOTH = [m for m in (_splitter_py, _splitter_c) if m is not None]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest):
    """Each splitter implementation in turn (``router._splitter_py``, ``router._splitter_c``)."""
    return request.param


@pytest.fixture(params=IMPLS[-1:])
def fastest(request: pytest.FixtureRequest):
    """The extension when built, else the twin: for the statistics of a split over 100,000 keys.
    The twins give the same answers on the golden values and on every table and key a property
    search tries (``test_*_golden``, ``test_twins_agree_*``), so the statistics are checked once."""
    return request.param


#: Fixtures that start ``router serve`` and its workers, or train the demo store they serve (``store``:
#: seconds of torch, once a session). A test that uses one, directly or through another fixture,
#: belongs to the daemon layer; one that starts a process otherwise says so with
#: ``@pytest.mark.daemon``. ``pytest -m "not daemon"`` runs the fast, in-process layer alone.
DAEMON_FIXTURES = frozenset({"start_daemon", "shared_daemon", "store"})


_WHOLE_MODULE = re.compile(r"^pytestmark = \[?[^\n]*\n?\s*pytest\.mark\.daemon", re.M)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """In a run of the fast layer alone (``-m "not daemon"``), a module marked daemon as a whole
    (``pytestmark``) is not even imported: the fast layer does not pay for its imports (torch, clients)."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") \
            and (config.option.markexpr or "").strip() == "not daemon" \
            and _WHOLE_MODULE.search(collection_path.read_text()):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # fixturenames is the whole closure: a module's own fixture built on shared_daemon counts too.
        if DAEMON_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.daemon)


def _own_children() -> set[int]:
    """Children of this process's threads, living or zombie (cheaper than a scan of /proc)."""
    out: set[int] = set()
    for path in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            out.update(int(pid) for pid in path.read_text().split())
        except OSError:
            pass  # a thread that ended meanwhile
    return out


@pytest.fixture(autouse=True)
def in_process_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a run that deselects the daemon layer, a test that starts a process anyway fails and says
    to mark it: the fast layer stays in-process. A child already reaped shows in RUSAGE_CHILDREN."""
    if "daemon" not in (request.config.option.markexpr or "") or request.node.get_closest_marker("daemon"):
        yield
        return
    live = _own_children()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    if _own_children() - live or resource.getrusage(resource.RUSAGE_CHILDREN) != reaped:
        pytest.fail(f"{request.node.nodeid} starts a process: mark it @pytest.mark.daemon", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), living or zombie."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command may contain spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After the whole session, the test process has no child left: no daemon, no worker."""
    before = set(children_of(os.getpid()))
    yield
    deadline = time.monotonic() + 5
    left = set(children_of(os.getpid())) - before
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in set(children_of(os.getpid())) - before if pid_alive(p)}
    assert not left, f"processes left behind: {sorted(left)}"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with the demo models and the fixture versions of mlp-small (``build_demo_store(extra=True)``)."""
    from modelkit.demo import build_demo_store

    path = tmp_path_factory.mktemp("store")
    build_demo_store(path, extra=True)
    return path


def write_config(path: Path, store: Path, models: list[dict], **server: object) -> Path:
    """Write a config.toml serving ``models`` (dicts shaped like the TOML tables)."""
    lines = ["[server]"]
    for k, v in server.items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[store]", f"path = {json.dumps(str(store))}", ""]
    for m in models:
        lines.append("[[models]]")
        for k, v in m.items():
            if k != "versions":
                lines.append(f"{k} = {json.dumps(v)}")
        for v in m["versions"]:
            lines.append("[[models.versions]]")
            for k, val in v.items():
                lines.append(f"{k} = {json.dumps(val)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


FRAUD = {
    "name": "fraud",
    "routing_key": "x-user-id",
    "versions": [
        {"version": "1", "weight": 90, "max_batch_size": 32},
        {"version": "2", "weight": 10, "max_batch_size": 32},
    ],
}


class RawConn:
    """One raw TCP connection to a daemon's port: bytes in, bytes buffered out."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def fill(self) -> None:
        """Read what arrives next into ``buf``; ConnectionError when the peer closed."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the daemon; unread: {self.buf!r}")
        self.buf += chunk

    def closed_by_peer(self) -> bool:
        """True when the daemon closed the connection (after everything it sent was read)."""
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


#: The store's fixture models call an operator that workers import only when told to (mlp-small/slow).
WORKER_PRELOAD = {"ROUTER_WORKER_PRELOAD": "modelkit.fixture_ops"}


class Daemon:
    """A running ``router serve`` subprocess (its workers preload :data:`WORKER_PRELOAD` unless ``env`` says)."""

    def __init__(self, config: Path, http_port: int, wire_port: int, env: dict[str, str],
                 nofile: tuple[int, int] | None = None) -> None:
        env = {**WORKER_PRELOAD, **env}
        self.config = config
        self.http_port = http_port
        self.wire_port = wire_port
        self.http = f"127.0.0.1:{http_port}"
        self.url = f"http://{self.http}"
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(config),
             "--http", self.http, "--msgpack", f"127.0.0.1:{wire_port}"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            # A file-handle limit of its own (soft, hard), as `ulimit -n` would set.
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
        )
        self.workers: list[int] = []
        self.signalled = False

    def send(self, sig: int) -> None:
        """Send ``sig`` once; a second SIGTERM while the daemon exits would kill it outright."""
        self.signalled = True
        self.proc.send_signal(sig)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None,
             timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def call(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None,
             timeout: float = 60) -> tuple[int, dict]:
        """An admin API call with a JSON body (bytes are sent as they are); returns (status, decoded JSON)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log}")
            try:
                if self.get("/v2/health/ready", timeout=1)[0] == 200:
                    self.workers = children_of(self.proc.pid)
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready in {timeout} s:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the daemon (unless :meth:`send` already did), wait for it, and assert
        none of its workers outlive it."""
        if self.proc.poll() is None:
            if not self.signalled:
                self.send(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon ignored signal {sig} for {timeout} s:\n{self.log}") from None
        self._log.close()
        deadline = time.monotonic() + 5
        left = [p for p in self.workers if pid_alive(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = [p for p in self.workers if pid_alive(p)]
        assert not left, f"worker processes outlived the daemon: {left}"
        return self.proc.returncode


@pytest.fixture
def start_daemon(tmp_path: Path, store: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``start_daemon(models=[...], env={...}, nofile=(soft, hard), **server_keys)`` -> a ready
    :class:`Daemon`."""
    started: list[Daemon] = []

    def start(models: list[dict] | None = None, env: dict[str, str] | None = None, wait: bool = True,
              nofile: tuple[int, int] | None = None, **server: object) -> Daemon:
        cfg = write_config(tmp_path / f"config{len(started)}.toml", store, models or [FRAUD], **server)
        e = dict(os.environ)
        e.update(env or {})
        d = Daemon(cfg, free_port(), free_port(), e, nofile)
        started.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[Daemon]:
    """One daemon for a whole module of read-only tests (fraud, mlp-small, mlp-wide)."""
    tmp = tmp_path_factory.mktemp("daemon")
    models = [
        FRAUD,
        {"name": "mlp-small", "versions": [{"version": "1", "max_batch_size": 64}]},
        {"name": "mlp-wide", "versions": [{"version": "1", "max_batch_size": 64, "max_batch_delay_us": 500}]},
    ]
    cfg = write_config(tmp / "config.toml", store, models, max_body_bytes=1 << 20)
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    d.wait_ready()
    yield d
    assert d.stop() == 0

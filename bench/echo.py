"""A plain TCP echo server: the reference for one network hop between the server and client cores.

``python -m bench.echo --port P`` (the harness runs it under ``taskset -c 0``;
``bench.client --mode echo`` on the other core sends frames of the msgpack
request's size and waits for them back). Blocking sockets, ``TCP_NODELAY``,
nothing but ``recv`` and ``sendall``; one connection at a time, served by the
main thread (so its CPU time shows in ``/proc/PID/task/*/schedstat``).
Prints ``ready`` on stdout once listening; exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys


def serve_conn(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    recv, sendall = conn.recv, conn.sendall
    try:
        while True:
            data = recv(1 << 16)
            if not data:
                break
            sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(64)
    print("ready", flush=True)
    try:
        while True:
            conn, _ = srv.accept()
            serve_conn(conn)
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A loopback TCP proxy in front of the S3 server that can fail or delay requests: storage outages and
a real object store's latency on demand.

Only the network edge is faked here; clients (s3fs/botocore) and the server (moto) are real. Each
client connection carries one request (``Connection: close`` is injected), so a fault or a delay can be
decided per request from its request line.

As a program (the scale benchmark runs it so): ``python tests/faults/proxy.py --upstream HOST:PORT
--port P --delay-ms 20 --log requests.log`` forwards with ``delay-ms`` added before each request and
appends each request line to the log.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; requests for which ``blocked(request_line)`` is true
    are answered by closing the connection (what a client sees when the endpoint goes away)."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.blocked: Callable[[str], bool] = lambda line: False
        self.seen: list[tuple[float, str, bool]] = []
        self.delay_s = 0.0  # added before forwarding each request: an object store's round-trip latency
        self.log = None  # a text file: one request line appended per request
        self._srv = socket.create_server(("127.0.0.1", port))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self._srv.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            headers, _, rest = head.partition(b"\r\n\r\n")
            lines = headers.decode("latin-1").split("\r\n")
            blocked = self.blocked(lines[0])
            self.seen.append((time.monotonic(), lines[0], blocked))
            if blocked:
                return  # connection closed without a response
            if self.delay_s:
                time.sleep(self.delay_s)
            lines = [ln for ln in lines if not ln.lower().startswith("connection:")] + ["Connection: close"]
            with socket.create_connection(self.upstream) as up:
                up.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + rest)
                done = threading.Event()

                def pump(src: socket.socket, dst: socket.socket) -> None:
                    try:
                        while data := src.recv(65536):
                            dst.sendall(data)
                    except OSError:
                        pass
                    finally:
                        done.set()

                threading.Thread(target=pump, args=(client, up), daemon=True).start()
                pump(up, client)
            if self.log is not None:
                self.log.write(lines[0] + "\n")
                self.log.flush()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="latency proxy in front of an S3 server")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--log", default=None, help="append one request line per request to this file")
    args = parser.parse_args()
    host, _, upstream_port = args.upstream.rpartition(":")
    proxy = FaultProxy((host, int(upstream_port)), port=args.port)
    proxy.delay_s = args.delay_ms / 1000
    proxy.log = open(args.log, "a") if args.log else None  # noqa: SIM115 - open for the process's lifetime
    while True:
        time.sleep(3600)

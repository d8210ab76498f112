"""A loopback TCP proxy in front of the S3 server that can fail requests: storage outages on demand.

Only the network edge is faked here; clients (s3fs/botocore) and the server (moto) are real. Each
client connection carries one request (``Connection: close`` is injected), so a fault can be decided
per request from its request line.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; requests for which ``blocked(request_line)`` is true
    are answered by closing the connection (what a client sees when the endpoint goes away)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.blocked: Callable[[str], bool] = lambda line: False
        self.seen: list[tuple[float, str, bool]] = []
        self._srv = socket.create_server(("127.0.0.1", 0))
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

"""A real HTTP image server on 127.0.0.1 (http.server in a thread), for the URL-fetching tests and bench/urls.py.

Routes (NAME: an image given to the server):
  /img/NAME      the image (image/jpeg), after `latency` seconds
  /flaky/NAME    500 the first time, then the image
  /busy/NAME     429 (Retry-After: 0) the first time, then the image
  /moved/NAME    301 to /img/NAME
  /missing       404
  /hang          nothing until the server stops (at most HANG_SECONDS)
  /trickle       headers, then one byte every TRICKLE_SECONDS (at most TRICKLE_BYTES)
  /big           BIG_BYTES of image/jpeg, no Content-Length (the end of the body is the connection's)
  /declared-big  a Content-Length of 10 GB, and no body
  /html          an HTML page, 200
  /loop          302 to itself
  /to-file       302 to file:///etc/passwd
Every request is counted by path in `requests`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANG_SECONDS = 10.0
TRICKLE_SECONDS = 0.2
TRICKLE_BYTES = 50
BIG_BYTES = 4 * 2**20


class ImageServer:
    """Serves `images` (name -> JPEG bytes) on a free loopback port while used as a context manager."""

    def __init__(self, images: dict[str, bytes], latency: float = 0.0) -> None:
        self.images = images
        self.latency = latency
        self.requests: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="image-server")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def count(self, path: str) -> int:
        """How many requests `path` received so far (counted once its first line was read)."""
        with self._lock:
            self.requests[path] += 1
            return self.requests[path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real image servers

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802  # http.server's name
                seen = server.count(self.path)
                route, _, name = self.path.lstrip("/").partition("/")
                if route in ("img", "flaky", "busy") and name in server.images:
                    if route == "flaky" and seen == 1:
                        return self.answer(500, b"try again", "text/plain")
                    if route == "busy" and seen == 1:
                        return self.answer(429, b"slow down", "text/plain", {"Retry-After": "0"})
                    time.sleep(server.latency)
                    return self.answer(200, server.images[name], "image/jpeg")
                if route == "moved":
                    return self.answer(301, b"", "text/plain", {"Location": f"/img/{name}"})
                if route == "loop":
                    return self.answer(302, b"", "text/plain", {"Location": "/loop"})
                if route == "to-file":
                    return self.answer(302, b"", "text/plain", {"Location": "file:///etc/passwd"})
                if route == "html":
                    return self.answer(200, b"<html><body>Not found, but 200</body></html>", "text/html")
                if route == "declared-big":
                    return self.answer(200, b"", "image/jpeg", {"Content-Length": str(10 * 2**30)})
                if route == "hang":
                    server.stopping.wait(HANG_SECONDS)
                    return None
                if route == "big":
                    return self.stream(b"\xff" * 65536 for _ in range(BIG_BYTES // 65536))
                if route == "trickle":
                    return self.stream(self.trickle())
                return self.answer(404, b"not found", "text/plain")

            def answer(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                headers = {"Content-Length": str(len(body))} | (headers or {})
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def stream(self, chunks: Iterable[bytes]) -> None:
                """A body with no Content-Length: it ends when the connection closes."""
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: what the test wants
                    pass

            def trickle(self) -> Iterator[bytes]:
                for _ in range(TRICKLE_BYTES):
                    if server.stopping.wait(TRICKLE_SECONDS):
                        return
                    yield b"\xff"

        return Handler

"""A real git server for tests: git's own smart-HTTP backend (``git http-backend``) behind a
small threaded HTTP server on loopback, serving the repositories under one folder.

Customer git fetches never reach the worker's disk, so tests fetch over HTTP like a customer's
would; the server's "host:port" is put in STACKPORT_GIT_TRUSTED_HOSTS (loopback is otherwise
refused). ``redirects`` maps a path prefix to an address the server answers 302 with.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit


class GitServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.redirects: dict[str, str] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"http://{self.host}/{name}"

    @contextmanager
    def running(self) -> Iterator[GitServer]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            server.requests.append(self.path)

        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            self._serve(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        def _serve(self, body: bytes) -> None:
            parts = urlsplit(self.path)
            for prefix, target in server.redirects.items():
                if parts.path.startswith(prefix):
                    self.send_response(302)
                    self.send_header("Location", target + parts.path[len(prefix) :] + "?" + parts.query)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "REMOTE_ADDR": self.client_address[0],
            }
            # Streamed: a large pack reaches the client as git makes it, never whole in memory.
            proc = subprocess.Popen(
                ["git", "http-backend"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdin is not None and proc.stdout is not None
            feeder = threading.Thread(target=_feed, args=(proc.stdin, body), daemon=True)
            feeder.start()
            try:
                headers = []
                while (line := proc.stdout.readline().decode("latin-1").rstrip("\r\n")) != "":
                    headers.append(line.split(":", 1))
                status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() != "status":
                        self.send_header(key, value.strip())
                self.send_header("Connection", "close")  # the body ends when the connection does
                self.end_headers()
                while chunk := proc.stdout.read(65536):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client went away (e.g. refused the download at its limit)
            finally:
                proc.kill()
                proc.wait()
                feeder.join()

    return Handler


def _feed(stdin: IO[bytes], body: bytes) -> None:
    with contextlib.suppress(OSError), stdin:
        stdin.write(body)

"""A local HTTP server for the rehearsal's synthetic downloads (a thread of this process)."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


class LocalServer:
    """Serve the files of `folder` at http://127.0.0.1:<port>/<name> while in a `with` block.

    `port` 0 takes a free port; a busy `port` falls back to a free one (the rehearsal asks for
    the port of its previous run, so that the download addresses, which Snakemake records as
    parameters, stay the same and nothing is fetched again)."""

    def __init__(self, folder: str | Path, port: int = 0) -> None:
        self.folder = Path(folder)
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalServer:
        handler = partial(_Quiet, directory=str(self.folder))
        try:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        except OSError:
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

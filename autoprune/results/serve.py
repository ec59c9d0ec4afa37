"""Serve a study's front explorer on loopback with the standard library's HTTP server.

The page is rebuilt from the study's records on every load, so reloading it during a
search shows the trials finished so far.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autoprune.results.explorer import explorer_html
from autoprune.results.study import Study

log = logging.getLogger(__name__)


def explorer_server(study: str | Path | Study, host: str = "127.0.0.1", port: int = 8050) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) answering ``/`` with the explorer page of ``study``;
    ``port=0`` takes a free port (read it from ``server.server_address``)."""
    study = (study if isinstance(study, Study) else Study(study)).require()
    explorer_html(study)  # fail now, before the URL is given, on a study the page cannot show

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(HTTPStatus.NOT_FOUND, "the explorer is at /")
                return
            body = explorer_html(study).encode("utf-8")
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server interface)
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)

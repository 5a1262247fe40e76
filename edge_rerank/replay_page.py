"""The session replay page: one self-contained HTML file (plain HTML/CSS/JS, the traces embedded as JSON; no build
step, no external requests: its Content-Security-Policy allows none) that plays simulated sessions back, the two
A/B arms side by side. ``edge-rerank replay RUN_DIR`` writes it (and ``--serve`` serves it on loopback); the demo
writes it next to its report. The traces come from :mod:`edge_rerank.simulator.replay`.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from edge_rerank.simulator.replay import read_traces

PAGE_FILE = "replay.html"  # under a run directory
_ASSETS = "replay_assets"


@functools.cache
def _asset(name: str) -> str:
    return resources.files("edge_rerank").joinpath(_ASSETS, name).read_text(encoding="utf-8")


def embed_json(data: object) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` survive (so neither
    ``</script>`` nor ``<!--`` can end or change the element); ``JSON.parse`` gives `data` back."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def extract_json(page: str) -> object:
    """The data embedded in a page written by :func:`build_page` (tests and tools read it back)."""
    start_tag = '<script id="replay-data" type="application/json">'
    i = page.index(start_tag) + len(start_tag)
    return json.loads(page[i: page.index("</script>", i)])


def build_page(traces: dict, *, title: str = "") -> str:
    """The page's HTML with `traces` (a :func:`~edge_rerank.simulator.replay.record_replays` document) inside."""
    if not traces.get("sessions"):
        raise ValueError("the traces hold no sessions")
    data = dict(traces, title=title) if title else traces
    html = _asset("replay.html")
    for marker, text in (("/*__CSS__*/", _asset("replay.css")), ("/*__JS__*/", _asset("replay.js"))):
        html = html.replace(marker, text, 1)
    return html.replace("__DATA__", embed_json(data), 1)


def write_page(run_dir: str | Path, out: str | Path | None = None, *, title: str = "") -> Path:
    """Read ``RUN_DIR/replay/traces.json`` and write the page (default ``RUN_DIR/replay.html``)."""
    traces = read_traces(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / PAGE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_page(traces, title=title), encoding="utf-8")
    return path


class _PageHandler(http.server.BaseHTTPRequestHandler):
    body: bytes = b""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.split("?")[0].split("#")[0] not in ("/", "/" + PAGE_FILE):
            self.send_error(404, "only the replay page is served here")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        return


def make_server(page: str | Path, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server answering ``/`` with the page file's bytes (port 0: a free one; ``server.server_port``)."""
    handler = type("ReplayPageHandler", (_PageHandler,), {"body": Path(page).read_bytes()})
    return http.server.ThreadingHTTPServer((host, port), handler)


@contextmanager
def serving(page: str | Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve the page in a background thread; yields its URL."""
    srv = make_server(page, host, port)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://{host}:{srv.server_port}/"
    finally:
        srv.shutdown()
        srv.server_close()

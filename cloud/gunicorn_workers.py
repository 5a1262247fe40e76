"""Gunicorn worker classes for the cloud service: gunicorn's own, except that a request with a transfer coding
the server does not implement (``Transfer-Encoding: gzip``, ``xchunked``) is answered 400, not 501. RFC 9112
§6.1 says SHOULD 501; we answer 400 so that a 5xx always means a fault of ours (alerts on the 5xx rate are not
set off by scanners sending garbage headers). Selected by ``cloud/serve.py`` (``--worker-class``)."""

from __future__ import annotations

from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding


class _ClientErrorsAre4xx:
    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader(f"Transfer-Encoding {exc.hdr!r} (not supported)", req)
        return super().handle_error(req, client, addr, exc)


def _sync():
    from gunicorn.workers.sync import SyncWorker

    return SyncWorker


def _gthread():
    from gunicorn.workers.gthread import ThreadWorker

    return ThreadWorker


try:  # gevent is the [cloud] extra's; without it only the sync and gthread workers exist
    from gunicorn.workers.ggevent import GeventWorker as _GeventBase

    class GeventWorker(_ClientErrorsAre4xx, _GeventBase):
        pass
except ImportError:  # pragma: no cover - depends on the install
    pass


class SyncWorker(_ClientErrorsAre4xx, _sync()):
    pass


class ThreadWorker(_ClientErrorsAre4xx, _gthread()):
    pass

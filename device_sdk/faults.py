"""How the device SDK reports what it refused: never an exception into the app (unless ``strict``), always a reason.

Every component that can fall back (the model manager keeping the last good model, the rerank service keeping the
cloud order, the feedback store dropping one bad event) counts its reasons in a :class:`FaultLog` and logs each
*kind* of reason once at WARNING, so a broken model or a bad event stream does not flood the app's log. A reason
is ``"kind: detail"``; the kind (before the first colon) is what is counted.

``strict=True`` (for developers and tests) raises :class:`DeviceFault` instead, with the same reason.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter


class DeviceFault(RuntimeError):
    """Raised instead of falling back when a component runs with ``strict=True``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.kind = reason_kind(reason)


def reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


class FaultLog:
    """Counts fallback reasons by kind; logs the first of each kind at WARNING (later ones at DEBUG)."""

    def __init__(self, logger: logging.Logger, *, strict: bool = False):
        self._log = logger
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.last: str | None = None
        self._lock = threading.Lock()

    def record(self, reason: str) -> str:
        """Note `reason` (raise it in strict mode); returns it so callers can ``return self.faults.record(...)``."""
        kind = reason_kind(reason)
        with self._lock:
            first = kind not in self.counts
            self.counts[kind] += 1
            self.last = reason
        if self.strict:
            raise DeviceFault(reason)
        if first:
            self._log.warning("%s (further '%s' reasons are logged at DEBUG)", reason, kind)
        else:
            self._log.debug("%s", reason)
        return reason

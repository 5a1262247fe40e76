"""Per-key upload quotas for ``/v1/logs``, shared by every gunicorn worker of a server: a token bucket of rows
(``rows_per_s``, bursts up to ``burst_rows``) and a byte budget per UTC day, kept in small JSON files under
``<log_dir>/.quota/`` and updated under a file lock (one lock + read + write per upload). Keys are stored as
sha256 prefixes, never in clear. Several servers sharing one log directory share the quotas too."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class QuotaConfig:
    rows_per_s: float = 2000.0  # sustained rows per second per key (0: no row limit)
    burst_rows: int = 16384  # bucket size: rows accepted at once after a pause
    bytes_per_day: int = 8 << 30  # request-body bytes per key and UTC day (0: no byte limit)


class QuotaExceeded(Exception):
    def __init__(self, reason: str, retry_after_s: int):
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, max(1, int(retry_after_s))


class FileQuota:
    def __init__(self, root: str | Path, cfg: QuotaConfig, clock=time.time):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg, self.clock = cfg, clock

    def charge(self, key: str, rows: int, nbytes: int) -> None:
        """Take `rows` rows and `nbytes` bytes from `key`'s quota, or raise QuotaExceeded (nothing taken) with the
        seconds until the request would fit."""
        c = self.cfg
        if c.rows_per_s > 0 and rows > c.burst_rows:
            raise QuotaExceeded(f"{rows} rows in one request, over the quota's burst of {c.burst_rows}: split it",
                                3600)
        name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        path = self.root / f"{name}.json"
        with open(path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.seek(0)
            try:
                st = json.loads(f.read() or "{}")
            except ValueError:
                st = {}
            now = self.clock()
            day = int(now // 86400)
            tokens = float(st.get("tokens", c.burst_rows))
            tokens = min(float(c.burst_rows), tokens + (now - float(st.get("t", now))) * c.rows_per_s)
            used = int(st.get("bytes", 0)) if st.get("day") == day else 0
            if c.bytes_per_day > 0 and used + nbytes > c.bytes_per_day:
                raise QuotaExceeded(f"daily upload quota of {c.bytes_per_day} bytes used up for this key",
                                    math.ceil((day + 1) * 86400 - now))
            if c.rows_per_s > 0 and rows > tokens:
                raise QuotaExceeded(f"upload rate over {c.rows_per_s:g} rows/s for this key",
                                    math.ceil((rows - tokens) / c.rows_per_s))
            st = {"t": now, "tokens": tokens - rows if c.rows_per_s > 0 else tokens, "day": day,
                  "bytes": used + nbytes}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(st))
            f.flush()  # a quota update lost in a crash is harmless: no fsync

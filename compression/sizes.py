"""Size helpers shared by the compression methods: what a model file costs on the wire."""

from __future__ import annotations

import gzip
from pathlib import Path


def gzip_size(path: str | Path, level: int = 9) -> int:
    """Bytes of `path` after gzip at `level` — what an HTTP download with ``Content-Encoding: gzip`` costs.

    A dense model file does not shrink when weights are pruned (a zero is still four bytes of fp32), but runs of
    zeros compress well, so the gzip-compressed download does."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=level, mtime=0))

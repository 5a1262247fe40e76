"""Size helpers shared by the compression methods: what a model file costs on the wire."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path


def file_size(path: str | Path) -> int:
    """Bytes of a model file, or of all files of a directory package (Core ML .mlpackage)."""
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def gzip_size(path: str | Path, level: int = 9) -> int:
    """Bytes of `path` after gzip at `level` — what an HTTP download with ``Content-Encoding: gzip`` costs; a
    directory package is measured as the deflated zip a bundle would carry.

    A dense model file does not shrink when weights are pruned (a zero is still four bytes of fp32), but runs of
    zeros compress well, so the gzip-compressed download does."""
    p = Path(path)
    if p.is_file():
        return len(gzip.compress(p.read_bytes(), compresslevel=level, mtime=0))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        for f in sorted(p.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(p).as_posix())
    return len(buf.getvalue())

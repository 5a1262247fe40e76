"""Impression logs: the Parquet schema (docs/impression_log_schema.md), conversion to/from the
``ImpressionRow`` contract, and a durable sink that writes one Parquet part per accepted batch.

Two formats read: version 1 (the shop world's fixed columns, what the cloud's ``/v1/logs`` writes) and version 2
(domain-neutral: item attributes are fields declared in the file's metadata, see :class:`LogDeclaration`; every
row is checked by :func:`parse_row_v2`, which names the bad field)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_rerank.device_sdk.contracts import (
    Context,
    EventKind,
    FeedbackEvent,
    ImpressionRow,
    LoggedCandidate,
    PageItem,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
SCHEMA_VERSION_V2 = "2"
SCHEMA_KEY = b"edge_rerank.impression_schema"
DECLARATION_KEY = b"edge_rerank.declaration"

CANDIDATE = pa.struct([
    ("item_id", pa.int64()), ("cloud_position", pa.int32()), ("cloud_score", pa.float32()),
    ("cloud_dense", pa.list_(pa.float32())), ("id_embedding", pa.list_(pa.float32())),
    ("embedding_found", pa.bool_()), ("category", pa.int32()), ("brand", pa.int32()),
    ("price_level", pa.int32()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("shown_position", pa.int32()), ("exposed", pa.bool_()), ("clicked", pa.bool_()), ("ordered", pa.bool_()),
    ("first_exposure_step", pa.int32()), ("click_step", pa.int32()), ("exposure_dwell_ms", pa.float32()),
])
EVENT = pa.struct([
    ("ts_ms", pa.int64()), ("request_id", pa.string()), ("item_id", pa.int64()), ("kind", pa.string()),
    ("position", pa.int32()), ("dwell_ms", pa.float32()), ("category", pa.int32()), ("brand", pa.int32()),
    ("price_level", pa.int32()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("id_embedding", pa.list_(pa.float32())),
])
IMPRESSION_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("session_id", pa.string()), ("user_id", pa.string()), ("query", pa.string()),
    ("ctx_lat", pa.float64()), ("ctx_lon", pa.float64()), ("ctx_hour", pa.int32()), ("ctx_device", pa.string()),
    ("page_index", pa.int32()), ("model_version", pa.string()), ("arm", pa.string()),
    ("candidates", pa.list_(CANDIDATE)), ("events", pa.list_(EVENT)), ("rerank_points", pa.list_(pa.int32())),
], metadata={b"edge_rerank.impression_schema": SCHEMA_VERSION.encode()})

_ITEM_KEYS = ("item_id", "cloud_position", "cloud_score", "category", "brand", "price_level", "lat", "lon")
_LABEL_KEYS = ("shown_position", "exposed", "clicked", "ordered", "first_exposure_step", "click_step",
               "exposure_dwell_ms")


def _cand_dict(c: LoggedCandidate) -> dict:
    d = {k: getattr(c.item, k) for k in _ITEM_KEYS}
    d.update({k: getattr(c, k) for k in _LABEL_KEYS})
    d["cloud_dense"] = c.item.cloud_dense.tolist()
    d["id_embedding"] = c.item.id_embedding.tolist()
    d["embedding_found"] = c.item.embedding_found
    return d


def _event_dict(e: FeedbackEvent) -> dict:
    return {"ts_ms": e.ts_ms, "request_id": e.request_id, "item_id": e.item_id, "kind": e.kind.name.lower(),
            "position": e.position, "dwell_ms": e.dwell_ms, "category": e.category, "brand": e.brand,
            "price_level": e.price_level, "lat": e.lat, "lon": e.lon,
            "id_embedding": None if e.id_embedding is None else np.asarray(e.id_embedding).tolist()}


def _vectors(vs: list, nullable: bool = False) -> pa.Array:
    """A list<float32> array built from numpy vectors (no per-value Python objects); None entries are nulls."""
    lengths = np.fromiter((0 if v is None else np.asarray(v).size for v in vs), dtype=np.int32, count=len(vs))
    offsets = np.zeros(len(vs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [np.asarray(v, dtype=np.float32).reshape(-1) for v in vs if v is not None]
    values = pa.array(np.concatenate(present) if present else np.empty(0, np.float32), type=pa.float32())
    mask = pa.array([v is None for v in vs], type=pa.bool_()) if nullable and any(v is None for v in vs) else None
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def _column(values: list, typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=typ)


def _structs(fields: pa.StructType, columns: dict[str, pa.Array]) -> pa.StructArray:
    return pa.StructArray.from_arrays([columns[f.name] for f in fields], fields=list(fields))


def _lists(counts: list[int], values: pa.Array) -> pa.ListArray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def rows_to_table(rows: Iterable[ImpressionRow]) -> pa.Table:
    """Rows -> a table of IMPRESSION_SCHEMA, built column by column (vectors go from numpy to Arrow directly:
    memory stays a small multiple of the rows' size)."""
    rows = list(rows)
    cands = [c for r in rows for c in r.candidates]
    events = [e for r in rows for e in r.events]
    ctypes = {f.name: f.type for f in CANDIDATE}
    ccols = {k: _column([getattr(c.item, k) for c in cands], ctypes[k]) for k in _ITEM_KEYS}
    ccols.update({k: _column([getattr(c, k) for c in cands], ctypes[k]) for k in _LABEL_KEYS})
    ccols["cloud_dense"] = _vectors([c.item.cloud_dense for c in cands])
    ccols["id_embedding"] = _vectors([c.item.id_embedding for c in cands])
    ccols["embedding_found"] = _column([c.item.embedding_found for c in cands], pa.bool_())
    etypes = {f.name: f.type for f in EVENT}
    ecols = {k: _column([getattr(e, k) for e in events], etypes[k])
             for k in ("ts_ms", "request_id", "item_id", "position", "dwell_ms", "category", "brand", "price_level",
                       "lat", "lon")}
    ecols["kind"] = _column([e.kind.name.lower() for e in events], pa.string())
    ecols["id_embedding"] = _vectors([e.id_embedding for e in events], nullable=True)
    points = [p for r in rows for p in r.rerank_points]
    cols = {
        "request_id": [r.request_id for r in rows], "session_id": [r.session_id for r in rows],
        "user_id": [r.user_id for r in rows], "query": [r.query for r in rows],
        "ctx_lat": [r.context.lat for r in rows], "ctx_lon": [r.context.lon for r in rows],
        "ctx_hour": [r.context.hour for r in rows], "ctx_device": [r.context.device for r in rows],
        "page_index": [r.page_index for r in rows], "model_version": [r.model_version for r in rows],
        "arm": [r.arm for r in rows]}
    arrays = {k: _column(v, IMPRESSION_SCHEMA.field(k).type) for k, v in cols.items()}
    arrays["candidates"] = _lists([len(r.candidates) for r in rows], _structs(CANDIDATE, ccols))
    arrays["events"] = _lists([len(r.events) for r in rows], _structs(EVENT, ecols))
    arrays["rerank_points"] = _lists([len(r.rerank_points) for r in rows], pa.array(points, type=pa.int32()))
    return pa.Table.from_arrays([arrays[f.name] for f in IMPRESSION_SCHEMA], schema=IMPRESSION_SCHEMA)


def _rows_to_table_pylist(rows: Iterable[ImpressionRow]) -> pa.Table:
    """The reference conversion (one Python dict per row; tests check :func:`rows_to_table` equals it)."""
    records = [{
        "request_id": r.request_id, "session_id": r.session_id, "user_id": r.user_id, "query": r.query,
        "ctx_lat": r.context.lat, "ctx_lon": r.context.lon, "ctx_hour": r.context.hour,
        "ctx_device": r.context.device, "page_index": r.page_index, "model_version": r.model_version,
        "arm": r.arm, "candidates": [_cand_dict(c) for c in r.candidates],
        "events": [_event_dict(e) for e in r.events], "rerank_points": list(r.rerank_points),
    } for r in rows]
    return pa.Table.from_pylist(records, schema=IMPRESSION_SCHEMA)


def _emb(v: list | None) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=np.float32)


def table_to_rows(table: pa.Table) -> list[ImpressionRow]:
    missing = set(IMPRESSION_SCHEMA.names) - set(table.schema.names)
    if missing:
        raise ValueError(f"impression log lacks columns {sorted(missing)} (see docs/impression_log_schema.md)")
    out = []
    for r in table.select(IMPRESSION_SCHEMA.names).to_pylist():
        cands = [LoggedCandidate(
            item=PageItem(cloud_dense=_emb(c["cloud_dense"]), id_embedding=_emb(c["id_embedding"]),
                          embedding_found=c["embedding_found"], **{k: c[k] for k in _ITEM_KEYS}),
            **{k: c[k] for k in _LABEL_KEYS}) for c in r["candidates"]]
        events = [FeedbackEvent(ts_ms=e["ts_ms"], request_id=e["request_id"], item_id=e["item_id"],
                                kind=EventKind[e["kind"].upper()], position=e["position"], dwell_ms=e["dwell_ms"],
                                category=e["category"], brand=e["brand"], price_level=e["price_level"],
                                lat=e["lat"], lon=e["lon"], id_embedding=_emb(e["id_embedding"]))
                  for e in r["events"]]
        out.append(ImpressionRow(
            request_id=r["request_id"], session_id=r["session_id"], user_id=r["user_id"], query=r["query"],
            context=Context(lat=r["ctx_lat"], lon=r["ctx_lon"], hour=r["ctx_hour"], device=r["ctx_device"]),
            page_index=r["page_index"], model_version=r["model_version"], arm=r["arm"], candidates=cands,
            events=events, rerank_points=list(r["rerank_points"])))
    return out


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STALE_TMP_S = 3600.0  # a temp part older than this belongs to an upload that died (uploads take seconds)


def clean_stale_tmp(root: str | Path, older_than_s: float = STALE_TMP_S) -> list[str]:
    """Delete the ``.*.tmp`` files a killed upload or compaction left in a log directory (only ones older than
    `older_than_s`, so a live upload's temp file is never touched). Returns their names."""
    root, gone = Path(root), []
    now = time.time()
    for p in root.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()
                gone.append(p.name)
    return gone


def _warm_up_writer() -> None:
    """Arrow and the Parquet writer allocate ~50 MB of lazily initialised state on their first use: take it at
    start-up (once per process), not inside the first upload."""
    global _WARM
    if _WARM:
        return
    import io

    item = PageItem(item_id=1, cloud_position=0, cloud_score=0.0, cloud_dense=np.zeros(4, np.float32),
                    id_embedding=np.zeros(4, np.float32), category=0, brand=0, price_level=0, lat=0.0, lon=0.0)
    ev = FeedbackEvent(ts_ms=0, request_id="w", item_id=1, kind=EventKind.CLICK, position=0, dwell_ms=0.0,
                       id_embedding=np.zeros(4, np.float32))
    row = ImpressionRow(request_id="w", session_id="w", user_id="w", query="w", context=Context(0.0, 0.0, 0),
                        page_index=0, model_version="", arm="", candidates=[LoggedCandidate(item, 0)], events=[ev],
                        rerank_points=[1])
    with pq.ParquetWriter(io.BytesIO(), IMPRESSION_SCHEMA, compression="zstd") as w:
        w.write_table(rows_to_table([row]))
    _WARM = True


_WARM = False


class LogSink:
    """Appends each accepted batch as its own Parquet part: written to a temp file, fsynced, renamed, and the
    directory fsynced. A batch is acknowledged only after that, so an acknowledged batch survives kill -9
    (and power loss, as far as the file system honours fsync). Small parts are merged later by
    :func:`compact_logs`. Stale temp parts of killed uploads are removed when a sink opens the directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(self.root)
        _warm_up_writer()


    def append(self, rows: list[ImpressionRow]) -> str:
        return self.append_slices([rows])[0]

    def append_slices(self, slices: Iterable[list[ImpressionRow]]) -> tuple[str, int]:
        """Write the rows of `slices` (an iterable, consumed one slice at a time so only one slice is in memory)
        as one part; (part name, rows). If the iterable raises, nothing is written and the error propagates."""
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = self.root / f".{name}.tmp"
        n = 0
        try:
            with pq.ParquetWriter(tmp, IMPRESSION_SCHEMA, compression="zstd") as w:
                for rows in slices:
                    if rows:
                        w.write_table(rows_to_table(rows))
                        n += len(rows)
            if n == 0:
                raise ValueError("no rows to write")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(self.root)
        return name, n


# ---- compaction ------------------------------------------------------------------------------------------
# A compaction writes the merged file under a temp name, records a journal (inputs + output), renames the
# output into place, deletes the inputs, then deletes the journal. A crash at any step leaves either the
# inputs or the output as the live data: readers (and the next compaction) skip the inputs of a journal
# whose output exists, and drop the temp output of one whose output does not.

def _journals(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for j in sorted(root.glob("compact-*.journal")):
        try:
            out.append((j, json.loads(j.read_text())))
        except (OSError, json.JSONDecodeError):
            continue  # a journal is written then renamed: an unreadable one is not ours
    return out


def live_log_files(root: str | Path) -> list[Path]:
    """The Parquet files of a log directory that hold live data (parts and compacted files), in name order."""
    root = Path(root)
    superseded: set[str] = set()
    for _, j in _journals(root):
        if (root / j["output"]).is_file():
            superseded.update(j["inputs"])
    return [p for p in sorted(root.glob("*.parquet")) if p.name not in superseded]


def _recover(root: Path) -> None:
    for jpath, j in _journals(root):
        if (root / j["output"]).is_file():
            for name in j["inputs"]:
                with contextlib.suppress(FileNotFoundError):
                    (root / name).unlink()
        else:
            with contextlib.suppress(FileNotFoundError):
                (root / f".{j['output']}.tmp").unlink()
        fsync_dir(root)
        jpath.unlink()
        fsync_dir(root)


def compact_logs(root: str | Path, *, min_parts: int = 2) -> dict:
    """Merge the small ``part-*.parquet`` files of a log directory into one ``compacted-*.parquet``
    (same schema, zstd). Safe against a crash at any point and against a server appending meanwhile
    (only parts that exist when it starts are merged). Returns counts."""
    root = Path(root)
    with open(root / ".compact.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        _recover(root)
        stale = clean_stale_tmp(root)
        parts, tables, bad = [], [], []
        for p in sorted(root.glob("part-*.parquet")):
            try:
                t, decl = _read_file(p)
                if decl is not None:
                    raise LogFormatError("a v2 part among the server's v1 parts")
            except Exception as exc:  # anything a damaged file makes pyarrow raise
                quarantine(root, p, f"{type(exc).__name__}: {str(exc)[:200]}")
                bad.append(p.name)
                continue
            parts.append(p)
            tables.append(t)
        if len(parts) < min_parts:
            return {"parts": len(parts), "rows": 0, "output": None, "quarantined": bad, "stale_tmp_removed": stale}
        table = pa.concat_tables(tables)
        del tables
        out = f"compacted-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = root / f".{out}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        journal = root / f"compact-{uuid.uuid4().hex}.journal"
        jtmp = root / f".{journal.name}.tmp"
        with open(jtmp, "w") as f:
            json.dump({"output": out, "inputs": [p.name for p in parts]}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(jtmp, journal)
        fsync_dir(root)
        os.replace(tmp, root / out)
        fsync_dir(root)
        _recover(root)  # deletes the inputs and the journal
        return {"parts": len(parts), "rows": table.num_rows, "output": out, "quarantined": bad,
                "stale_tmp_removed": stale}


def log_files(path: str | Path) -> list[Path]:
    path = Path(path)
    files = live_log_files(path) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .parquet impression logs under {path}")
    return files


QUARANTINE = "quarantine"


@dataclass
class LogReadReport:
    """What a log read skipped: files moved to ``quarantine/`` (name -> reason) and rows left out (reason ->
    count, with the first few examples as ``file row k: reason``)."""

    files_read: int = 0
    rows_read: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)
    skipped_rows: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def skip_row(self, where: str, reason: str) -> None:
        key = reason.split(":")[0]
        self.skipped_rows[key] = self.skipped_rows.get(key, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {reason}")

    def summary(self) -> str:
        n = sum(self.skipped_rows.values())
        parts = [f"read {self.rows_read} rows from {self.files_read} files"]
        if self.skipped_files:
            parts.append(f"skipped {len(self.skipped_files)} unreadable files (moved to {QUARANTINE}/: "
                         + "; ".join(f"{k}: {v}" for k, v in list(self.skipped_files.items())[:5]) + ")")
        if n:
            parts.append(f"skipped {n} invalid rows (" + ", ".join(f"{k}: {v}" for k, v in
                                                                   self.skipped_rows.items()) + ")")
        return "; ".join(parts)


def quarantine(root: Path, f: Path, reason: str) -> Path:
    """Move an unreadable log file out of the live set into ``root/quarantine/`` with ``<name>.reason.txt`` next
    to it, and log one warning naming it."""
    qdir = root / QUARANTINE
    qdir.mkdir(exist_ok=True)
    dst = qdir / f.name
    if dst.exists():
        dst = qdir / f"{f.stem}-{uuid.uuid4().hex[:8]}{f.suffix}"
    (qdir / f"{dst.name}.reason.txt").write_text(reason + "\n")
    os.replace(f, dst)
    fsync_dir(root)
    log.warning("impression log %s is unreadable (%s): moved to %s", f.name, reason, dst)
    return dst


def _read_file(f: Path) -> tuple[pa.Table, LogDeclaration | None]:
    """One log file's table and v2 declaration, or an exception naming what is wrong with it."""
    table = pq.read_table(f)
    decl = declaration_of(table.schema, f.name)
    if decl is None:
        missing = set(IMPRESSION_SCHEMA.names) - set(table.schema.names)
        if missing:
            raise LogFormatError(f"lacks columns {sorted(missing)}")
        try:
            table = table.select(IMPRESSION_SCHEMA.names).cast(IMPRESSION_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise LogFormatError(f"columns do not match the impression schema: {str(exc)[:160]}") from None
    return table, decl


def read_logs(path: str | Path, *, report: LogReadReport | None = None) -> list[ImpressionRow]:
    """Read every live Parquet file under `path` (a file or a directory) into contracts: v1 and v2 files alike.

    In a directory, a file that cannot be read (empty, truncated, not Parquet, wrong schema) is moved to
    ``quarantine/`` with a reason file and skipped with one warning; a single file given as `path` raises instead.
    Without `report`, a malformed row raises :class:`LogFormatError` (file, row, field); with one, malformed rows
    (v2: any field; v1: non-finite numbers, out-of-range values, vectors of another width than the file's first
    row) are skipped and counted in it."""
    path = Path(path)
    rows: list[ImpressionRow] = []
    for f in log_files(path):
        try:
            table, decl = _read_file(f)
        except Exception as exc:  # anything a damaged file makes pyarrow raise
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            if not path.is_dir():
                raise LogFormatError(f"{f.name}: {reason}") from exc
            quarantine(path, f, reason)
            if report is not None:
                report.skipped_files[f.name] = reason
            continue
        if report is not None:
            report.files_read += 1
        if decl is None:
            got = table_to_rows(table)
            if report is not None:
                got = _valid_v1_rows(got, f.name, report)
            rows.extend(got)
            continue
        for i, rec in enumerate(table.to_pylist()):
            try:
                rows.append(parse_row_v2(rec, decl))
            except LogRowError as exc:
                if report is None:
                    raise LogFormatError(f"{f.name} row {i}: {exc}") from None
                report.skip_row(f"{f.name} row {i}", str(exc))
    if report is not None:
        report.rows_read = len(rows)
    return rows


def _valid_v1_rows(rows: list[ImpressionRow], name: str, report: LogReadReport) -> list[ImpressionRow]:
    from edge_rerank.cloud.log_ingest import IngestLimits, row_problem

    limits = None
    out = []
    for i, r in enumerate(rows):
        if limits is None and r.candidates:
            it = r.candidates[0].item
            limits = IngestLimits(dense_dim=int(np.asarray(it.cloud_dense).size),
                                  emb_dim=int(np.asarray(it.id_embedding).size))
        problem = row_problem(r, limits or IngestLimits())
        if problem is None:
            out.append(r)
        else:
            report.skip_row(f"{name} row {i}", problem)
    return out


# ---- log format v2 (domain-neutral) ---------------------------------------------------------------------------

class LogRowError(ValueError):
    """One v2 row is malformed: the message names the field (``candidates[3].fields.topic``) and the reason."""


class LogFormatError(ValueError):
    """A log file cannot be read (bad metadata, or a malformed row: file and row in the message)."""


_FIELD_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
MAX_CANDIDATES = 4096
MAX_EVENTS = 100_000
MAX_VECTOR = 4096
MAX_STR = 256


@dataclass(frozen=True)
class LogDeclaration:
    """What a v2 log file's items carry, stored as JSON under the schema metadata key ``edge_rerank.declaration``:
    categorical fields (str or int values), numeric fields (numbers), an item vector of `vector_dim` values
    (0: none) and whether items have a location (`geo`: ``lat`` / ``lon``)."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    vector_dim: int = 0
    geo: bool = False

    def __post_init__(self) -> None:
        names = [*self.categorical, *self.numeric]
        if not all(isinstance(n, str) and 1 <= len(n) <= 64 and set(n) <= _FIELD_NAME for n in names):
            raise LogFormatError(f"declared field names must be 1..64 characters of a-z, 0-9, _; got {names!r:.80}")
        if len(set(names)) != len(names) or len(names) > 64 or "item" in names:
            raise LogFormatError(f"declared field names must be unique (at most 64, not 'item'), got {names!r:.80}")
        if not isinstance(self.vector_dim, int) or isinstance(self.vector_dim, bool) \
                or not 0 <= self.vector_dim <= MAX_VECTOR:
            raise LogFormatError(f"vector_dim must be an int in 0..{MAX_VECTOR}, got {self.vector_dim!r:.40}")
        if not isinstance(self.geo, bool):
            raise LogFormatError("geo must be true or false")
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "numeric", tuple(self.numeric))

    def to_json(self) -> str:
        return json.dumps({"categorical": list(self.categorical), "numeric": list(self.numeric),
                           "vector_dim": self.vector_dim, "geo": self.geo})

    @classmethod
    def from_json(cls, text: str | bytes) -> LogDeclaration:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LogFormatError(f"declaration is not JSON: {exc}") from None
        if not isinstance(d, dict) or set(d) - {"categorical", "numeric", "vector_dim", "geo"}:
            raise LogFormatError(f"declaration must be an object with categorical, numeric, vector_dim, geo: "
                                 f"{str(d)[:80]}")
        for k in ("categorical", "numeric"):
            if not isinstance(d.get(k, []), list):
                raise LogFormatError(f"declaration {k} must be a list")
        return cls(tuple(d.get("categorical", ())), tuple(d.get("numeric", ())), d.get("vector_dim", 0),
                   d.get("geo", False))


# every key a v2 row / candidate / event may carry (docs/impression_log_schema.md documents each)
V2_ROW_KEYS = ("request_id", "session_id", "user_id", "query", "ctx_lat", "ctx_lon", "ctx_hour", "ctx_device",
               "page_index", "model_version", "arm", "candidates", "events", "rerank_points")
V2_CANDIDATE_KEYS = ("item_id", "cloud_score", "cloud_position", "cloud_dense", "vector", "fields", "lat", "lon",
                     "shown_position", "exposed", "grade", "label_step", "first_exposure_step", "exposure_dwell_ms")
V2_EVENT_KEYS = ("item_id", "kind", "ts_ms", "request_id", "position", "dwell_ms", "fields", "vector", "lat", "lon")

# v1 -> v2: the shop world's attributes are three declared categorical fields and a location
V1_DECLARATION = LogDeclaration(categorical=("category", "brand", "price_level"), geo=True)


def declaration_of(schema: pa.Schema, source: object = "log") -> LogDeclaration | None:
    """The v2 declaration of a file's schema; None for a v1 file. LogFormatError for an unknown version."""
    meta = schema.metadata or {}
    version = meta.get(SCHEMA_KEY, SCHEMA_VERSION.encode()).decode(errors="replace")
    if version == SCHEMA_VERSION:
        return None
    if version != SCHEMA_VERSION_V2:
        raise LogFormatError(f"{source}: impression schema version {version!r:.20} (this code reads 1 and 2)")
    if DECLARATION_KEY not in meta:
        raise LogFormatError(f"{source}: a v2 log needs the schema metadata key {DECLARATION_KEY.decode()} "
                             "(see docs/impression_log_schema.md)")
    return LogDeclaration.from_json(meta[DECLARATION_KEY])


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _get(d: dict, key: str, where: str, check, default, required: bool = False):
    v = d.get(key)
    if v is None:
        if required:
            raise LogRowError(f"{where}{key}: missing (required)")
        return default
    ok, why = check(v)
    if not ok:
        raise LogRowError(f"{where}{key}: {why}, got {type(v).__name__} {repr(v)[:40]}")
    return v


def _int_in(lo: int, hi: int):
    return lambda v: (_is_int(v) and lo <= v <= hi, f"must be an int in {lo}..{hi}")


def _finite(lo: float = -math.inf):
    def check(v):
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)) and v >= lo
        return ok, "must be a finite number" + (f" >= {lo:g}" if lo > -math.inf else "")
    return check


def _str(limit: int = MAX_STR):
    return lambda v: (isinstance(v, str) and len(v) <= limit, f"must be a string of at most {limit} characters")


def _bool(v):
    return isinstance(v, bool), "must be true or false"


def _vector(dim: int | None):
    def check(v):
        if not isinstance(v, list) or not 1 <= len(v) <= MAX_VECTOR:
            return False, f"must be a list of 1..{MAX_VECTOR} numbers"
        if dim and len(v) != dim:
            return False, f"must have {dim} values (declared vector_dim)"
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            return False, "must hold finite numbers only"
        return True, ""
    return check


def _fields(d: dict, decl: LogDeclaration, where: str) -> dict:
    f = d.get("fields")
    if f is None:
        return {}
    if not isinstance(f, dict):
        raise LogRowError(f"{where}fields: must be a struct of the declared fields, got {type(f).__name__}")
    out: dict = {}
    for name, v in f.items():
        if name in decl.categorical:
            if v is not None and not ((isinstance(v, str) and len(v) <= MAX_STR) or _is_int(v)):
                raise LogRowError(f"{where}fields.{name}: a categorical value must be a string (at most {MAX_STR} "
                                  f"characters) or an int, got {type(v).__name__} {repr(v)[:40]}")
        elif name in decl.numeric:
            if v is not None and not _finite()(v)[0]:
                raise LogRowError(f"{where}fields.{name}: a numeric value must be a finite number, got "
                                  f"{type(v).__name__} {repr(v)[:40]}")
        else:
            raise LogRowError(f"{where}fields.{name}: not a declared field (declared: "
                              f"{[*decl.categorical, *decl.numeric]})")
        out[str(name)] = v
    return out


def _geo(d: dict, decl: LogDeclaration, where: str) -> tuple[float, float]:
    if not decl.geo:
        return 0.0, 0.0
    return (float(_get(d, "lat", where, _finite(), 0.0)), float(_get(d, "lon", where, _finite(), 0.0)))


def parse_row_v2(rec: object, decl: LogDeclaration) -> ImpressionRow:
    """One v2 row (a dict, as ``pyarrow.Table.to_pylist`` gives it) -> ImpressionRow. Raises LogRowError naming
    the first bad field. Optional fields get their documented defaults."""
    if not isinstance(rec, dict):
        raise LogRowError(f"a row must be a struct, got {type(rec).__name__}")
    g = _get
    request_id = g(rec, "request_id", "", _str(128), None, True)
    session_id = g(rec, "session_id", "", _str(128), None, True)
    raw_events = g(rec, "events", "", lambda v: (isinstance(v, list) and len(v) <= MAX_EVENTS,
                                                 f"must be a list of at most {MAX_EVENTS} events"), [])
    n_ev = len(raw_events)
    events = []
    for k, e in enumerate(raw_events):
        w = f"events[{k}]."
        if not isinstance(e, dict):
            raise LogRowError(f"events[{k}]: must be a struct, got {type(e).__name__}")
        kind = g(e, "kind", w, lambda v: (isinstance(v, str) and 1 <= len(v) <= 64,
                                          "must be a string of 1..64 characters"), None, True)
        std = EventKind.__members__.get(kind.upper())
        vec = g(e, "vector", w, _vector(decl.vector_dim or None), None)
        lat, lon = _geo(e, decl, w)
        events.append(FeedbackEvent(
            ts_ms=g(e, "ts_ms", w, _int_in(0, (1 << 63) - 1), k), request_id=g(e, "request_id", w, _str(128), ""),
            item_id=g(e, "item_id", w, _int_in(-1, (1 << 63) - 1), None, True),
            kind=std if std is not None and kind == kind.lower() else EventKind.EXPOSURE,
            position=g(e, "position", w, _int_in(-1, (1 << 31) - 1), -1),
            dwell_ms=float(g(e, "dwell_ms", w, _finite(0.0), 0.0)), lat=lat, lon=lon,
            id_embedding=None if vec is None else np.asarray(vec, dtype=np.float32),
            attrs=_fields(e, decl, w), kind_name=kind))
    raw_cands = g(rec, "candidates", "", lambda v: (isinstance(v, list) and 1 <= len(v) <= MAX_CANDIDATES,
                                                    f"must be a list of 1..{MAX_CANDIDATES} candidates"), None, True)
    cands = []
    positions = set()
    for k, c in enumerate(raw_cands):
        w = f"candidates[{k}]."
        if not isinstance(c, dict):
            raise LogRowError(f"candidates[{k}]: must be a struct, got {type(c).__name__}")
        vec = g(c, "vector", w, _vector(decl.vector_dim or None), None)
        dense = g(c, "cloud_dense", w, _vector(None), [])
        lat, lon = _geo(c, decl, w)
        shown = g(c, "shown_position", w, _int_in(0, (1 << 31) - 1), -1)
        positions.add(shown >= 0)
        grade = g(c, "grade", w, _int_in(0, 63), 0)
        item = PageItem(item_id=g(c, "item_id", w, _int_in(0, (1 << 63) - 1), None, True),
                        cloud_position=g(c, "cloud_position", w, _int_in(0, (1 << 31) - 1), k),
                        cloud_score=float(g(c, "cloud_score", w, _finite(), 0.0)),
                        cloud_dense=np.asarray(dense, dtype=np.float32),
                        id_embedding=np.asarray(vec if vec is not None else [], dtype=np.float32),
                        embedding_found=vec is not None, category=-1, brand=-1, price_level=-1, lat=lat, lon=lon,
                        attrs=_fields(c, decl, w))
        label_step = g(c, "label_step", w, _int_in(0, n_ev), n_ev)
        cands.append(LoggedCandidate(
            item=item, shown_position=shown, exposed=g(c, "exposed", w, _bool, True), clicked=grade > 0,
            first_exposure_step=g(c, "first_exposure_step", w, _int_in(0, n_ev), n_ev),
            click_step=label_step if grade > 0 else -1,
            exposure_dwell_ms=float(g(c, "exposure_dwell_ms", w, _finite(0.0), 0.0)), grade=grade))
    if len(positions) > 1:
        raise LogRowError("candidates[].shown_position: set for some candidates and null for others (a list is "
                          "either ordered or unordered)")
    points = g(rec, "rerank_points", "", lambda v: (isinstance(v, list) and len(v) <= 4096,
                                                    "must be a list of at most 4096 ints"), [n_ev])
    for k, p in enumerate(points):
        if not _is_int(p) or not 0 <= p <= n_ev:
            raise LogRowError(f"rerank_points[{k}]: must be an int in 0..{n_ev} (an index into events), "
                              f"got {repr(p)[:40]}")
    ctx = Context(lat=float(g(rec, "ctx_lat", "", _finite(), 0.0)), lon=float(g(rec, "ctx_lon", "", _finite(), 0.0)),
                  hour=g(rec, "ctx_hour", "", _int_in(0, 23), 12), device=g(rec, "ctx_device", "", _str(), "unknown"))
    return ImpressionRow(
        request_id=request_id, session_id=session_id, user_id=g(rec, "user_id", "", _str(128), ""),
        query=g(rec, "query", "", _str(), ""), context=ctx, page_index=g(rec, "page_index", "", _int_in(0, 1 << 20), 0),
        model_version=g(rec, "model_version", "", _str(), ""), arm=g(rec, "arm", "", _str(), "logged"),
        candidates=cands, events=events, rerank_points=list(points))


def _item_fields(obj: PageItem | FeedbackEvent, decl: LogDeclaration) -> dict:
    from edge_rerank.device_sdk.features.operators import field_value

    return {f: field_value(obj, f) for f in (*decl.categorical, *decl.numeric)}


def row_to_record_v2(row: ImpressionRow, decl: LogDeclaration) -> dict:
    """An ImpressionRow as a v2 record (the v1 -> v2 mapping with :data:`V1_DECLARATION`)."""
    def geo(o):
        return {"lat": o.lat, "lon": o.lon} if decl.geo else {}

    def vec(v):
        return None if v is None or not np.asarray(v).size else np.asarray(v, dtype=np.float32).tolist()

    return {
        "request_id": row.request_id, "session_id": row.session_id, "user_id": row.user_id, "query": row.query,
        "ctx_lat": row.context.lat, "ctx_lon": row.context.lon, "ctx_hour": row.context.hour,
        "ctx_device": row.context.device, "page_index": row.page_index, "model_version": row.model_version,
        "arm": row.arm, "rerank_points": list(row.rerank_points),
        "candidates": [{
            "item_id": c.item.item_id, "cloud_position": c.item.cloud_position, "cloud_score": c.item.cloud_score,
            "cloud_dense": vec(c.item.cloud_dense), "vector": vec(c.item.id_embedding),
            "fields": _item_fields(c.item, decl), **geo(c.item),
            "shown_position": c.shown_position if c.shown_position >= 0 else None, "exposed": c.exposed,
            "grade": c.label_grade if c.click_step >= 0 else 0,
            "label_step": c.click_step if c.click_step >= 0 else None,
            "first_exposure_step": c.first_exposure_step if c.first_exposure_step >= 0 else None,
            "exposure_dwell_ms": c.exposure_dwell_ms} for c in row.candidates],
        "events": [{
            "ts_ms": e.ts_ms, "request_id": e.request_id, "item_id": e.item_id, "kind": e.name,
            "position": e.position, "dwell_ms": e.dwell_ms, "fields": _item_fields(e, decl), **geo(e),
            "vector": vec(e.id_embedding)} for e in row.events],
    }


def records_to_table_v2(records: list[dict], decl: LogDeclaration) -> pa.Table:
    """v2 records (dicts as documented) -> a pyarrow Table carrying the v2 schema metadata."""
    table = pa.Table.from_pylist(records)
    meta = dict(table.schema.metadata or {})
    meta.update({SCHEMA_KEY: SCHEMA_VERSION_V2.encode(), DECLARATION_KEY: decl.to_json().encode()})
    return table.replace_schema_metadata(meta)


def write_logs_v2(records: list[dict], decl: LogDeclaration, path: str | Path) -> Path:
    path = Path(path)
    pq.write_table(records_to_table_v2(records, decl), path, compression="zstd")
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m edge_rerank.cloud.logs",
                                description="Impression-log maintenance: merge the per-batch Parquet parts that "
                                            "/v1/logs writes into one compacted file (crash-safe).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compact", help="merge part-*.parquet files of a log directory")
    c.add_argument("--log-dir", required=True)
    c.add_argument("--min-parts", type=int, default=2, help="do nothing below this many parts")
    a = p.parse_args(argv)
    print(json.dumps(compact_logs(a.log_dir, min_parts=a.min_parts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

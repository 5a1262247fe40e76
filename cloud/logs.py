"""Impression logs: the Parquet schema (docs/impression_log_schema.md), conversion to/from the
``ImpressionRow`` contract, and a durable sink that writes one Parquet part per accepted batch."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterable
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

SCHEMA_VERSION = "1"

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


def rows_to_table(rows: Iterable[ImpressionRow]) -> pa.Table:
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


class LogSink:
    """Appends each accepted batch as its own Parquet part: written to a temp file, fsynced, renamed, and the
    directory fsynced. A batch is acknowledged only after that, so an acknowledged batch survives kill -9
    (and power loss, as far as the file system honours fsync). Small parts are merged later by
    :func:`compact_logs`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def append(self, rows: list[ImpressionRow]) -> str:
        table = rows_to_table(rows)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = self.root / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)
        return name


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
        parts = sorted(root.glob("part-*.parquet"))
        if len(parts) < min_parts:
            return {"parts": len(parts), "rows": 0, "output": None}
        table = pa.concat_tables([pq.read_table(p).select(IMPRESSION_SCHEMA.names) for p in parts])
        table = table.cast(IMPRESSION_SCHEMA)
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
        return {"parts": len(parts), "rows": table.num_rows, "output": out}


def read_logs(path: str | Path) -> list[ImpressionRow]:
    """Read every live Parquet file under `path` (a file or a directory) into contracts."""
    path = Path(path)
    files = live_log_files(path) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .parquet impression logs under {path}")
    rows: list[ImpressionRow] = []
    for f in files:
        rows.extend(table_to_rows(pq.read_table(f)))
    return rows


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

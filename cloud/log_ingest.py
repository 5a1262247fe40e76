"""Bounded ``/v1/logs`` ingestion: cheap checks on the raw body before any parse, one row parsed at a time, every
row validated at the door.

Memory per request stays proportional to the body: the protobuf body is split into its rows by walking the
top-level wire format (no parse, at most ``max_rows + 1`` fields looked at), each row (at most ``max_row_bytes``)
is parsed on its own, its repeated fields counted before it is converted, and rows are converted and written in
small slices (``LogSink.append_slices``). Rows the training code could not use are refused with the row and the
field: non-finite numbers, vectors of the wrong width, out-of-range ints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import ContractError, ImpressionRow


class IngestError(Exception):
    """A log upload is refused; `status` is the HTTP status (400 malformed or invalid, 413 over a limit)."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class IngestLimits:
    max_rows: int = 4096  # rows per request
    max_row_bytes: int = 256 * 1024  # encoded bytes of one row
    max_candidates: int = 1024  # per row
    max_events: int = 4096  # per row
    emb_dim: int | None = None  # id_embedding width (the embedding store's); None: not checked
    dense_dim: int | None = None  # cloud_dense width (the fine ranker's hidden layer); None: not checked


_LOGBATCH_ROWS = 2  # LogBatch.rows field number (proto/edge_rerank.proto)


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= end or shift > 63:
            raise IngestError("malformed LogBatch: truncated or overlong varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def split_rows(body: bytes, limits: IngestLimits) -> list[memoryview]:
    """The encoded rows of a protobuf ``LogBatch``, without parsing it: walks the top-level fields only.
    413 after ``max_rows`` rows or for a row over ``max_row_bytes``; 400 for broken framing."""
    buf = memoryview(body)
    end, i = len(buf), 0
    rows: list[memoryview] = []
    while i < end:
        key, i = _varint(buf, i, end)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, i = _varint(buf, i, end)
            continue
        if wt == 1 or wt == 5:
            i += 8 if wt == 1 else 4
            if i > end:
                raise IngestError("malformed LogBatch: truncated fixed-width field")
            continue
        if wt != 2 or field == 0:
            raise IngestError(f"malformed LogBatch: wire type {wt} of field {field} at byte {i}")
        n, i = _varint(buf, i, end)
        if i + n > end:
            raise IngestError(f"malformed LogBatch: field {field} of {n} bytes runs past the body")
        if field == _LOGBATCH_ROWS:
            if len(rows) >= limits.max_rows:
                raise IngestError(f"more than {limits.max_rows} rows in one request: split the batch", 413)
            if n > limits.max_row_bytes:
                raise IngestError(f"row {len(rows)} is {n} bytes, over the {limits.max_row_bytes}-byte row limit",
                                  413)
            rows.append(buf[i:i + n])
        i += n
    return rows


def parse_rows(encoded: list[memoryview], limits: IngestLimits) -> Iterator[ImpressionRow]:
    """Parse, bound and validate one row at a time."""
    for k, raw in enumerate(encoded):
        try:
            msg = wire.parse(wire.pb.ImpressionLog, bytes(raw))
        except ContractError as exc:
            raise IngestError(f"row {k}: {exc}") from None
        yield row_from_message(k, msg, limits)


def row_from_message(k: int, msg, limits: IngestLimits) -> ImpressionRow:
    """One parsed ``ImpressionLog`` -> a validated ImpressionRow, counts checked before conversion."""
    if len(msg.candidates) > limits.max_candidates:
        raise IngestError(f"row {k} candidates: {len(msg.candidates)} candidates, at most {limits.max_candidates}",
                          413)
    if len(msg.events) > limits.max_events:
        raise IngestError(f"row {k} events: {len(msg.events)} events, at most {limits.max_events}", 413)
    try:
        row = wire.impression_from_proto(msg)
    except ContractError as exc:
        raise IngestError(f"row {k}: {exc}") from None
    problem = row_problem(row, limits)
    if problem is not None:
        raise IngestError(f"row {k} {problem}")
    return row


def _bad_vector(v: np.ndarray | None, width: int | None, allow_empty: bool = False) -> str | None:
    if v is None:
        return None
    v = np.asarray(v)
    if width is not None and v.shape != (width,) and not (allow_empty and v.size == 0):
        return f"must have {width} values, got {v.size}"
    if v.size and not np.isfinite(v).all():
        return f"must hold finite numbers only (first bad value at index {int(np.flatnonzero(~np.isfinite(v))[0])})"
    return None


def _bad_number(x: float) -> bool:
    return not math.isfinite(x)


def row_problem(row: ImpressionRow, limits: IngestLimits) -> str | None:
    """The first field of `row` training could not use, as ``"<field>: <reason>"``; None if the row is fine."""
    c = row.context
    for name, v in (("context.lat", c.lat), ("context.lon", c.lon)):
        if _bad_number(v):
            return f"{name}: must be a finite number, got {v!r}"
    if not 0 <= c.hour <= 23:
        return f"context.hour: must be in 0..23, got {c.hour}"
    if not 0 <= row.page_index <= 1 << 20:
        return f"page_index: must be in 0..{1 << 20}, got {row.page_index}"
    n_ev = len(row.events)
    for j, cand in enumerate(row.candidates):
        w, it = f"candidates[{j}]", cand.item
        for name, v in (("item.cloud_score", it.cloud_score), ("item.lat", it.lat), ("item.lon", it.lon),
                        ("exposure_dwell_ms", cand.exposure_dwell_ms)):
            if _bad_number(v):
                return f"{w}.{name}: must be a finite number, got {v!r}"
        if cand.exposure_dwell_ms < 0:
            return f"{w}.exposure_dwell_ms: must be >= 0, got {cand.exposure_dwell_ms!r}"
        why = _bad_vector(it.cloud_dense, limits.dense_dim)
        if why:
            return f"{w}.item.cloud_dense: {why}"
        why = _bad_vector(it.id_embedding, limits.emb_dim, allow_empty=not it.embedding_found)
        if why:
            return f"{w}.item.id_embedding: {why}"
        if it.cloud_position < 0:
            return f"{w}.item.cloud_position: must be >= 0, got {it.cloud_position}"
        if cand.shown_position < -1:
            return f"{w}.shown_position: must be >= -1, got {cand.shown_position}"
        for name, v in (("first_exposure_step", cand.first_exposure_step), ("click_step", cand.click_step)):
            if not -1 <= v <= n_ev:
                return f"{w}.{name}: must be in -1..{n_ev} (an index into events), got {v}"
    for j, e in enumerate(row.events):
        w = f"events[{j}]"
        for name, v in (("dwell_ms", e.dwell_ms), ("lat", e.lat), ("lon", e.lon)):
            if _bad_number(v):
                return f"{w}.{name}: must be a finite number, got {v!r}"
        if e.dwell_ms < 0:
            return f"{w}.dwell_ms: must be >= 0, got {e.dwell_ms!r}"
        if e.ts_ms < 0:
            return f"{w}.ts_ms: must be >= 0, got {e.ts_ms}"
        why = _bad_vector(e.id_embedding, limits.emb_dim)
        if why:
            return f"{w}.id_embedding: {why}"
    return None


# ---- JSON bodies (debugging): depth checked before json.loads -------------------------------------------

_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth_ok(body: bytes, max_depth: int) -> bool:
    """False if `body` nests arrays/objects deeper than `max_depth` (strings skipped); stops at the first
    level over the limit, so a deep attack costs max_depth steps."""
    depth = 0
    for m in _JSON_TOKENS.finditer(body):
        t = m.group()[:1]
        if t in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return False
        elif t in (b"]", b"}"):
            depth -= 1
    return True

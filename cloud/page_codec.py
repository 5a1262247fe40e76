"""Fast protobuf encoding of page items for the server: the wire bytes of ``SearchPage.items`` written directly
(the same message ``device_sdk.wire.page_to_proto`` builds, field for field; tests check that they parse to equal
messages for every shape of input). The per-search fields (score, dense vector, embedding row) have a fixed width
per item and are laid out for the whole page at once with numpy; only the position varint and the concatenation
are per item. ``PageEncoder`` also keeps the bytes of the fields an item never changes (id, category, brand, price
level, coordinates) per catalog row, so a page costs a few byte joins per item."""

from __future__ import annotations

import math
import struct

import numpy as np

from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import Context, ContractError, EmbeddingEncoding, SearchRequest

# the fields of PageItem and EmbeddingRow (proto/edge_rerank.proto), as wire tags (field number << 3 | wire type)
_ITEMS = b"\x2a"  # SearchPage.items = 5, length-delimited
_ITEM_ID, _POSITION, _SCORE, _DENSE, _EMB = b"\x08", b"\x10", b"\x1d", b"\x22", b"\x2a"
_CATEGORY, _BRAND, _PRICE, _LAT, _LON = b"\x30", b"\x38", b"\x40", b"\x49", b"\x51"
_EMB_ENCODING, _EMB_DATA, _EMB_SCALE, _EMB_FOUND = b"\x08", b"\x12", b"\x1d", b"\x20\x01"
_SMALL = [bytes([v]) for v in range(128)]
_F16 = np.dtype("<f2")


def varint(v: int) -> bytes:
    """Protobuf base-128 varint of a (64-bit two's complement) integer."""
    if 0 <= v < 128:
        return _SMALL[v]
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _int_field(tag: bytes, v: int) -> bytes:
    return tag + varint(v) if v else b""  # proto3: a zero is not written


_POSITIONS = [_int_field(_POSITION, p) for p in range(4096)]
_LENGTHS = [varint(n) for n in range(1 << 14)]  # item message lengths (two varint bytes at most)


def _quantize(emb: np.ndarray, encoding: EmbeddingEncoding, *, fp16_scales: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows as little-endian float16 or int8, one row per item; scales) as ``PackedEmbedding.pack`` packs them.
    fp16 rows have scale 1.0 (None instead of the ones when not `fp16_scales`)."""
    v = np.asarray(emb, dtype=np.float32)
    if not math.isfinite(float(np.add.reduce(v, axis=None, dtype=np.float64))):  # float32s: finite iff each is
        raise ContractError("embedding row has non-finite values")
    n = v.shape[0]
    if encoding == EmbeddingEncoding.FP16:
        return v.astype(_F16), (np.ones(n, dtype=np.float64) if fp16_scales else None)
    if encoding == EmbeddingEncoding.INT8:
        peak = np.abs(v).max(axis=1).astype(np.float64) if v.shape[1] else np.zeros(n)
        scale = np.where(peak > 1e-30, peak / 127.0, 1.0)
        return np.clip(np.rint(v.astype(np.float64) / scale[:, None]), -127, 127).astype(np.int8), scale
    raise ContractError(f"unknown embedding encoding {encoding!r}")


def pack_rows(emb: np.ndarray, encoding: EmbeddingEncoding) -> tuple[list[bytes], np.ndarray]:
    """(packed row bytes, scales) exactly as ``PackedEmbedding.pack`` packs each row."""
    q, scale = _quantize(emb, encoding)
    return [q[k].tobytes() for k in range(q.shape[0])], scale


def encode_items(*, item_id: np.ndarray, start: int, scores: np.ndarray, dense: np.ndarray, emb: np.ndarray,
                 found: np.ndarray, category: np.ndarray, brand: np.ndarray, price_level: np.ndarray,
                 lat: np.ndarray, lon: np.ndarray, encoding: EmbeddingEncoding) -> bytes:
    """The ``items`` field of a SearchPage, serialized (concatenate with the page header's bytes)."""
    statics = [static_fields(*f) for f in zip(item_id.tolist(), category.tolist(), brand.tolist(),
                                               price_level.tolist(), np.asarray(lat, np.float64).tolist(),
                                               np.asarray(lon, np.float64).tolist(), strict=True)]
    return _encode(statics, start, scores, dense, emb, found, encoding)


def static_fields(item_id: int, category: int, brand: int, price_level: int, lat: float, lon: float) -> bytes:
    """The PageItem fields that belong to the catalog item, not to the search (proto3: integer zeros are not
    written; coordinates always are, so -0.0 survives as the reference encoder keeps it)."""
    return b"".join((_int_field(_ITEM_ID, item_id), _int_field(_CATEGORY, category), _int_field(_BRAND, brand),
                     _int_field(_PRICE, price_level), _LAT, struct.pack("<d", lat), _LON, struct.pack("<d", lon)))


class _Layout:
    """The fixed-width part of every item of a page shape (dense width, embedding width, encoding) as a packed
    numpy record: score, dense vector, then the embedding row message (encoding, data, scale, found), with every
    tag and length already written in a template. Zeros and False are written explicitly where that keeps the width
    fixed: they parse the same as absent fields. A page's part is the template's first n records with the per-search
    fields assigned, one field at a time for the whole page."""

    def __init__(self, dense_dim: int, q_dtype: np.dtype, emb_dim: int, encoding: EmbeddingEncoding) -> None:
        dw, ew = 4 * dense_dim, emb_dim * q_dtype.itemsize
        emb_body = len(_int_field(_EMB_ENCODING, int(encoding))) + (1 + len(varint(ew)) + ew if ew else 0) + 5 + 2
        parts: list[tuple[str, bytes, object]] = [  # (field name, header bytes before it, field type)
            ("score", _SCORE, "<f4"),
            ("dense", _DENSE + varint(dw) if dw else b"", ("<f4", (dense_dim,)) if dw else None),
            ("emb", _EMB + varint(emb_body) + _int_field(_EMB_ENCODING, int(encoding))
             + (_EMB_DATA + varint(ew) if ew else b""), (q_dtype, (emb_dim,)) if ew else None),
            ("scale", _EMB_SCALE, "<f4"),
            ("found", _EMB_FOUND[:1], "u1")]
        fields: list[tuple] = []
        heads: list[tuple[str, bytes]] = []
        for name, head, ftype in parts:
            if head:
                fields.append((f"h_{name}", "u1", (len(head),)))
                heads.append((f"h_{name}", head))
            if ftype is not None:
                fields.append((name, *ftype) if isinstance(ftype, tuple) else (name, ftype))
        self.dtype = np.dtype(fields)  # packed: no padding between fields
        self.width = self.dtype.itemsize
        self.void = np.dtype(f"V{self.width}")  # one item's fixed part as one bytes value
        self.has_dense, self.has_emb = bool(dw), bool(ew)
        self._template = np.zeros(0, np.uint8)
        self._heads = heads

    def records(self, n: int) -> np.ndarray:
        """n fresh records with every header written (and scale 1.0, the fp16 encoding's)."""
        if len(self._template) < n * self.width:
            t = np.zeros(max(n, 128), self.dtype)
            for name, head in self._heads:
                t[name] = np.frombuffer(head, dtype=np.uint8)
            t["scale"] = 1.0
            self._template = t.view(np.uint8)  # raw bytes: a copy of them is a memcpy
        return self._template[:n * self.width].copy().view(self.dtype)


_LAYOUTS: dict[tuple, _Layout] = {}


def _layout(dense_dim: int, q_dtype: np.dtype, emb_dim: int, encoding: EmbeddingEncoding) -> _Layout:
    key = (dense_dim, q_dtype, emb_dim, encoding)
    lay = _LAYOUTS.get(key)
    if lay is None:
        if len(_LAYOUTS) >= 64:  # page shapes are few; a bound against odd callers
            _LAYOUTS.clear()
        lay = _LAYOUTS[key] = _Layout(dense_dim, q_dtype, emb_dim, encoding)
    return lay


def _encode(statics: list[bytes], start: int, scores: np.ndarray, dense: np.ndarray, emb: np.ndarray,
            found: np.ndarray, encoding: EmbeddingEncoding) -> bytes:
    q, scale = _quantize(emb, encoding, fp16_scales=False)
    n = q.shape[0]
    if n == 0:
        return b""
    d = np.asarray(dense, dtype=np.float32).reshape(n, -1)
    lay = _layout(d.shape[1], q.dtype, q.shape[1], encoding)
    m = lay.records(n)
    m["score"] = scores  # cast on assignment as astype casts (float64 scores: rounded to float32 once)
    if lay.has_dense:
        m["dense"] = d
    if lay.has_emb:
        m["emb"] = q
    if scale is not None:  # fp16 rows: scale 1.0, as the template has it
        m["scale"] = scale
    m["found"] = found  # bool -> 0 / 1
    width = lay.width
    chunks = m.view(lay.void).tolist()  # each item's fixed-width part as bytes
    if start + n <= len(_POSITIONS):
        positions = _POSITIONS[start:start + n]
    else:
        positions = [_int_field(_POSITION, start + k) for k in range(n)]
    lengths, n_lengths = _LENGTHS, len(_LENGTHS)
    sizes = [ls + lp + width for ls, lp in zip(map(len, statics), map(len, positions), strict=True)]
    # per item: tag, length, static fields, position, the fixed-width part; interleaved without a Python loop
    out: list[bytes] = [_ITEMS] * (5 * n)
    out[1::5] = [lengths[z] if z < n_lengths else varint(z) for z in sizes]
    out[2::5] = statics
    out[3::5] = positions
    out[4::5] = chunks
    return b"".join(out)


class PageEncoder:
    """Encodes pages of one catalog's items, keeping each row's static fields (``static_fields``) once encoded:
    at most `max_rows` of them (~150 bytes each with the dict entry: ~10 MiB per worker at the default), then the
    oldest half is dropped. Safe to share between threads (a race only encodes a row twice)."""

    def __init__(self, *, item_id: np.ndarray, category: np.ndarray, brand: np.ndarray, price_level: np.ndarray,
                 lat: np.ndarray, lon: np.ndarray, max_rows: int = 1 << 16) -> None:
        self._cols = (item_id, category, brand, price_level, lat, lon)
        self._static: dict[int, bytes] = {}
        self.max_rows = max_rows

    def _statics(self, rows: list[int]) -> list[bytes]:
        got = self._static
        out = list(map(got.get, rows))
        if None not in out:  # the common case: every row's fields are encoded already
            return out  # type: ignore[return-value]
        for k, r in enumerate(rows):
            if out[k] is None:
                ids, cat, brand, price, lat, lon = self._cols
                out[k] = static_fields(int(ids[r]), int(cat[r]), int(brand[r]), int(price[r]), float(lat[r]),
                                       float(lon[r]))
                if len(got) >= self.max_rows:
                    for old in list(got)[: len(got) // 2]:
                        got.pop(old, None)
                got[r] = out[k]
        return out

    def encode(self, rows: np.ndarray, *, start: int, scores: np.ndarray, dense: np.ndarray, emb: np.ndarray,
               found: np.ndarray, encoding: EmbeddingEncoding) -> bytes:
        """The ``items`` field of a SearchPage showing catalog rows `rows` (see ``encode_items``)."""
        return _encode(self._statics(np.asarray(rows).tolist()), start, scores, dense, emb, found, encoding)


# ---- the request and the page header ---------------------------------------------------------------------------
def _str_field(tag: bytes, v: str) -> bytes:
    if not v:
        return b""  # proto3: an empty string is not written
    b = v.encode("utf-8")
    n = len(b)
    return tag + (_SMALL[n] if n < 128 else varint(n)) + b


_MODEL_VERSIONS: dict[str, bytes] = {}  # model_version -> its encoded field (a handful per server)


def page_head(request_id: str, session_id: str, page_index: int, model_version: str, has_more: bool) -> bytes:
    """The serialized header fields of a SearchPage (all but ``items``), the bytes
    ``pb.SearchPage(request_id=..., session_id=..., page_index=..., model_version=..., has_more=...)
    .SerializeToString()`` gives (fields in number order, proto3 defaults left out; tested against it)."""
    if not -(1 << 31) <= page_index < (1 << 31):
        raise ValueError(f"page_index {page_index} is out of int32 range")
    mv = _MODEL_VERSIONS.get(model_version)
    if mv is None:
        mv = _str_field(b"\x22", model_version)
        if len(_MODEL_VERSIONS) >= 256:
            _MODEL_VERSIONS.clear()
        _MODEL_VERSIONS[model_version] = mv
    return b"".join((_str_field(b"\x0a", request_id), _str_field(b"\x12", session_id),
                     (b"\x18" + _SMALL[page_index]) if 0 < page_index < 128 else _int_field(b"\x18", page_index),
                     mv, b"\x30\x01" if has_more else b""))


def _direct_request_ok() -> bool:
    """search_request may fill the dataclasses' fields directly while they are plain frozen dataclasses with exactly
    these fields and nothing run at construction."""
    from dataclasses import fields, is_dataclass

    return (is_dataclass(SearchRequest) and is_dataclass(Context)
            and tuple(f.name for f in fields(SearchRequest)) == ("request_id", "session_id", "user_id", "query",
                                                                 "context", "page_index", "page_size")
            and tuple(f.name for f in fields(Context)) == ("lat", "lon", "hour", "device")
            and not hasattr(SearchRequest, "__post_init__") and not hasattr(Context, "__post_init__")
            and "__slots__" not in vars(SearchRequest) and "__slots__" not in vars(Context))


_DIRECT_REQUEST = _direct_request_ok()


def search_request(m) -> SearchRequest:
    """``wire.request_from_proto(m)`` (an equal SearchRequest, field for field), without the frozen dataclasses'
    per-field ``object.__setattr__``: the search handler builds one per request. Falls back to ``wire`` if the
    contracts change shape."""
    if not _DIRECT_REQUEST:
        return wire.request_from_proto(m)
    c = m.context
    ctx = object.__new__(Context)
    ctx.__dict__.update(lat=c.lat, lon=c.lon, hour=c.hour, device=c.device)
    req = object.__new__(SearchRequest)
    req.__dict__.update(request_id=m.request_id, session_id=m.session_id, user_id=m.user_id, query=m.query,
                        context=ctx, page_index=m.page_index, page_size=m.page_size or 25)
    return req

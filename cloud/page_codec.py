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

from edge_rerank.device_sdk.contracts import ContractError, EmbeddingEncoding

# the fields of PageItem and EmbeddingRow (proto/edge_rerank.proto), as wire tags (field number << 3 | wire type)
_ITEMS = b"\x2a"  # SearchPage.items = 5, length-delimited
_ITEM_ID, _POSITION, _SCORE, _DENSE, _EMB = b"\x08", b"\x10", b"\x1d", b"\x22", b"\x2a"
_CATEGORY, _BRAND, _PRICE, _LAT, _LON = b"\x30", b"\x38", b"\x40", b"\x49", b"\x51"
_EMB_ENCODING, _EMB_DATA, _EMB_SCALE, _EMB_FOUND = b"\x08", b"\x12", b"\x1d", b"\x20\x01"
_SMALL = [bytes([v]) for v in range(128)]


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


def _quantize(emb: np.ndarray, encoding: EmbeddingEncoding) -> tuple[np.ndarray, np.ndarray]:
    """(rows as little-endian float16 or int8, one row per item; scales) as ``PackedEmbedding.pack`` packs them."""
    v = np.asarray(emb, dtype=np.float32)
    if not math.isfinite(float(np.add.reduce(v, axis=None, dtype=np.float64))):  # float32s: finite iff each is
        raise ContractError("embedding row has non-finite values")
    n = v.shape[0]
    if encoding == EmbeddingEncoding.FP16:
        return v.astype("<f2"), np.ones(n, dtype=np.float64)
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


def _encode(statics: list[bytes], start: int, scores: np.ndarray, dense: np.ndarray, emb: np.ndarray,
            found: np.ndarray, encoding: EmbeddingEncoding) -> bytes:
    q, scale = _quantize(emb, encoding)
    n = q.shape[0]
    if n == 0:
        return b""
    # everything but the static fields and the position has a fixed width per item, so it is laid out as one
    # byte matrix: score, dense vector, then the embedding row message (encoding, data, scale, found). Zeros and
    # False are written explicitly where that keeps the width fixed: they parse the same as absent fields.
    d = np.asarray(dense, dtype=np.float32).reshape(n, -1)
    dw, ew = 4 * d.shape[1], q.shape[1] * q.itemsize
    emb_body = len(_int_field(_EMB_ENCODING, int(encoding))) + (1 + len(varint(ew)) + ew if ew else 0) + 5 + 2
    cols: list[tuple[bytes, np.ndarray | None]] = [
        (_SCORE, np.ascontiguousarray(scores, dtype="<f4").reshape(n, 1)),
        (_DENSE + varint(dw) if dw else b"", d.astype("<f4") if dw else None),
        (_EMB + varint(emb_body) + _int_field(_EMB_ENCODING, int(encoding)) + (_EMB_DATA + varint(ew) if ew else b""),
         q if ew else None),
        (_EMB_SCALE, np.ascontiguousarray(scale, dtype="<f4").reshape(n, 1)),
        (_EMB_FOUND[:1], np.asarray(found, dtype=np.uint8).reshape(n, 1))]
    width = sum(len(h) + (0 if a is None else a.shape[1] * a.itemsize) for h, a in cols)
    m = np.empty((n, width), dtype=np.uint8)
    at = 0
    for h, a in cols:
        m[:, at:at + len(h)] = np.frombuffer(h, dtype=np.uint8)
        at += len(h)
        if a is not None:
            w = a.shape[1] * a.itemsize
            m[:, at:at + w] = np.ascontiguousarray(a).view(np.uint8).reshape(n, w)
            at += w
    fixed = m.tobytes()
    out: list[bytes] = []
    add = out.extend
    for k, static in enumerate(statics):  # per item: tag, length, static fields, position, the fixed-width part
        pos = start + k
        p = _POSITIONS[pos] if pos < len(_POSITIONS) else _int_field(_POSITION, pos)
        size = len(static) + len(p) + width
        add((_ITEMS, _LENGTHS[size] if size < len(_LENGTHS) else varint(size), static, p,
             fixed[width * k:width * (k + 1)]))
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

"""Fast protobuf encoding of page items for the server (the same message ``device_sdk.wire.page_to_proto``
builds, field for field; a test checks they parse to equal messages). Embedding rows are packed for a whole
page at once with numpy instead of item by item."""

from __future__ import annotations

import numpy as np

from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import ContractError, EmbeddingEncoding


def pack_rows(emb: np.ndarray, encoding: EmbeddingEncoding) -> tuple[list[bytes], np.ndarray]:
    """(packed row bytes, scales) exactly as ``PackedEmbedding.pack`` packs each row."""
    v = np.asarray(emb, dtype=np.float32)
    if not np.all(np.isfinite(v)):
        raise ContractError("embedding row has non-finite values")
    n = v.shape[0]
    if encoding == EmbeddingEncoding.FP16:
        h = v.astype("<f2")
        return [h[k].tobytes() for k in range(n)], np.ones(n, dtype=np.float64)
    if encoding == EmbeddingEncoding.INT8:
        peak = np.abs(v).max(axis=1).astype(np.float64) if v.shape[1] else np.zeros(n)
        scale = np.where(peak > 1e-30, peak / 127.0, 1.0)
        q = np.clip(np.rint(v.astype(np.float64) / scale[:, None]), -127, 127).astype(np.int8)
        return [q[k].tobytes() for k in range(n)], scale
    raise ContractError(f"unknown embedding encoding {encoding!r}")


def encode_items(*, item_id: np.ndarray, start: int, scores: np.ndarray, dense: np.ndarray, emb: np.ndarray,
                 found: np.ndarray, category: np.ndarray, brand: np.ndarray, price_level: np.ndarray,
                 lat: np.ndarray, lon: np.ndarray, encoding: EmbeddingEncoding) -> bytes:
    """The ``items`` field of a SearchPage, serialized (concatenate with the page header's bytes)."""
    data, scale = pack_rows(emb, encoding)
    msg = wire.pb.SearchPage()
    ids, cats, brands, prices = item_id.tolist(), category.tolist(), brand.tolist(), price_level.tolist()
    lats, lons, sc, fd = lat.tolist(), lon.tolist(), np.asarray(scores, np.float32).tolist(), found.tolist()
    dl, scl, enc = np.asarray(dense, np.float32).tolist(), scale.tolist(), int(encoding)
    for k in range(len(ids)):
        it = msg.items.add()
        it.item_id, it.cloud_position, it.cloud_score = ids[k], start + k, sc[k]
        it.cloud_dense.extend(dl[k])
        e = it.id_embedding
        e.encoding, e.data, e.scale, e.found = enc, data[k], scl[k], fd[k]
        it.category, it.brand, it.price_level, it.lat, it.lon = cats[k], brands[k], prices[k], lats[k], lons[k]
    return msg.SerializeToString()

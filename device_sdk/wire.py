"""Protobuf <-> contracts. The only place that knows the generated message classes."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError, Message

from edge_rerank.device_sdk._proto import edge_rerank_pb2 as pb
from edge_rerank.device_sdk.contracts import (
    Context,
    ContractError,
    EmbeddingEncoding,
    EventKind,
    FeedbackEvent,
    ImpressionRow,
    LoggedCandidate,
    PackedEmbedding,
    PageItem,
    SearchPage,
    SearchRequest,
)

__all__ = ["pb", "parse", "request_to_proto", "request_from_proto", "page_to_proto", "page_from_proto",
           "event_to_proto", "event_from_proto", "impression_to_proto", "impression_from_proto",
           "log_batch_to_bytes", "log_batch_from_bytes", "page_from_bytes", "page_to_bytes"]


def parse(message_cls: type[Message], data: bytes) -> Message:
    """Parse bytes into a message, raising ContractError (not a protobuf internal error) if malformed."""
    msg = message_cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ContractError(f"malformed {message_cls.__name__}: {exc}") from exc
    return msg


def _ctx_to_proto(c: Context) -> pb.Context:
    return pb.Context(lat=c.lat, lon=c.lon, hour=c.hour, device=c.device)


def _ctx_from_proto(m: pb.Context) -> Context:
    return Context(lat=m.lat, lon=m.lon, hour=m.hour, device=m.device)


def request_to_proto(r: SearchRequest) -> pb.SearchRequest:
    return pb.SearchRequest(request_id=r.request_id, session_id=r.session_id, user_id=r.user_id,
                            query=r.query, context=_ctx_to_proto(r.context), page_index=r.page_index,
                            page_size=r.page_size)


def request_from_proto(m: pb.SearchRequest) -> SearchRequest:
    return SearchRequest(request_id=m.request_id, session_id=m.session_id, user_id=m.user_id, query=m.query,
                         context=_ctx_from_proto(m.context), page_index=m.page_index,
                         page_size=m.page_size or 25)


def _emb_to_proto(vec: np.ndarray, encoding: EmbeddingEncoding, found: bool) -> pb.EmbeddingRow:
    p = PackedEmbedding.pack(vec, encoding, found)
    return pb.EmbeddingRow(encoding=int(p.encoding), data=p.data, scale=p.scale, found=p.found)


def _emb_from_proto(m: pb.EmbeddingRow) -> tuple[np.ndarray, bool]:
    try:
        enc = EmbeddingEncoding(m.encoding)
    except ValueError as exc:
        raise ContractError(f"unknown embedding encoding {m.encoding}") from exc
    return PackedEmbedding(enc, m.data, m.scale, m.found).unpack(), m.found


def _item_to_proto(it: PageItem, encoding: EmbeddingEncoding) -> pb.PageItem:
    return pb.PageItem(item_id=it.item_id, cloud_position=it.cloud_position, cloud_score=it.cloud_score,
                       cloud_dense=it.cloud_dense.tolist(),
                       id_embedding=_emb_to_proto(it.id_embedding, encoding, it.embedding_found),
                       category=it.category, brand=it.brand, price_level=it.price_level, lat=it.lat,
                       lon=it.lon)


def _item_from_proto(m: pb.PageItem) -> PageItem:
    emb, found = _emb_from_proto(m.id_embedding)
    return PageItem(item_id=m.item_id, cloud_position=m.cloud_position, cloud_score=m.cloud_score,
                    cloud_dense=np.asarray(m.cloud_dense, dtype=np.float32), id_embedding=emb,
                    category=m.category, brand=m.brand, price_level=m.price_level, lat=m.lat, lon=m.lon,
                    embedding_found=found)


def page_to_proto(p: SearchPage, encoding: EmbeddingEncoding = EmbeddingEncoding.FP16) -> pb.SearchPage:
    return pb.SearchPage(request_id=p.request_id, session_id=p.session_id, page_index=p.page_index,
                         model_version=p.model_version,
                         items=[_item_to_proto(i, encoding) for i in p.items], has_more=p.has_more)


def page_from_proto(m: pb.SearchPage) -> SearchPage:
    return SearchPage(request_id=m.request_id, session_id=m.session_id, page_index=m.page_index,
                      model_version=m.model_version, items=[_item_from_proto(i) for i in m.items],
                      has_more=m.has_more)


def page_from_bytes(data: bytes) -> SearchPage:
    """A ``/v1/search`` response body -> SearchPage (ContractError if malformed)."""
    return page_from_proto(parse(pb.SearchPage, data))


def page_to_bytes(p: SearchPage, encoding: EmbeddingEncoding = EmbeddingEncoding.FP16) -> bytes:
    return page_to_proto(p, encoding).SerializeToString()


def event_to_proto(e: FeedbackEvent, encoding: EmbeddingEncoding = EmbeddingEncoding.FP16) -> pb.FeedbackEvent:
    m = pb.FeedbackEvent(ts_ms=e.ts_ms, request_id=e.request_id, item_id=e.item_id, kind=int(e.kind),
                         position=e.position, dwell_ms=e.dwell_ms, category=e.category, brand=e.brand,
                         price_level=e.price_level, lat=e.lat, lon=e.lon)
    if e.id_embedding is not None:
        m.id_embedding.CopyFrom(_emb_to_proto(e.id_embedding, encoding, True))
    return m


def event_from_proto(m: pb.FeedbackEvent) -> FeedbackEvent:
    try:
        kind = EventKind(m.kind)
    except ValueError as exc:
        raise ContractError(f"unknown event kind {m.kind}") from exc
    emb = _emb_from_proto(m.id_embedding)[0] if m.HasField("id_embedding") else None
    return FeedbackEvent(ts_ms=m.ts_ms, request_id=m.request_id, item_id=m.item_id, kind=kind,
                         position=m.position, dwell_ms=m.dwell_ms, category=m.category, brand=m.brand,
                         price_level=m.price_level, lat=m.lat, lon=m.lon, id_embedding=emb)


def impression_to_proto(r: ImpressionRow,
                        encoding: EmbeddingEncoding = EmbeddingEncoding.FP16) -> pb.ImpressionLog:
    cands = [pb.LoggedCandidate(item=_item_to_proto(c.item, encoding), shown_position=c.shown_position,
                                exposed=c.exposed, clicked=c.clicked, ordered=c.ordered,
                                first_exposure_step=c.first_exposure_step, click_step=c.click_step,
                                exposure_dwell_ms=c.exposure_dwell_ms) for c in r.candidates]
    return pb.ImpressionLog(request_id=r.request_id, session_id=r.session_id, user_id=r.user_id, query=r.query,
                            context=_ctx_to_proto(r.context), page_index=r.page_index,
                            model_version=r.model_version, arm=r.arm, candidates=cands,
                            events=[event_to_proto(e, encoding) for e in r.events],
                            rerank_points=list(r.rerank_points))


def impression_from_proto(m: pb.ImpressionLog) -> ImpressionRow:
    n_events = len(m.events)
    points = list(m.rerank_points)
    if any(p < 0 or p > n_events for p in points):
        raise ContractError("rerank_points must index into events (0..len(events))")
    cands = [LoggedCandidate(item=_item_from_proto(c.item), shown_position=c.shown_position, exposed=c.exposed,
                             clicked=c.clicked, ordered=c.ordered, first_exposure_step=c.first_exposure_step,
                             click_step=c.click_step, exposure_dwell_ms=c.exposure_dwell_ms)
             for c in m.candidates]
    return ImpressionRow(request_id=m.request_id, session_id=m.session_id, user_id=m.user_id, query=m.query,
                         context=_ctx_from_proto(m.context), page_index=m.page_index,
                         model_version=m.model_version, arm=m.arm, candidates=cands,
                         events=[event_from_proto(e) for e in m.events], rerank_points=points)


def log_batch_to_bytes(rows: list[ImpressionRow], client_id: str = "") -> bytes:
    return pb.LogBatch(client_id=client_id, rows=[impression_to_proto(r) for r in rows]).SerializeToString()


def log_batch_from_bytes(data: bytes) -> list[ImpressionRow]:
    msg = parse(pb.LogBatch, data)
    return [impression_from_proto(r) for r in msg.rows]

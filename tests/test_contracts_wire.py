import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import (
    Context,
    ContractError,
    EmbeddingEncoding,
    EventKind,
    FeedbackEvent,
    ImpressionRow,
    LoggedCandidate,
    PackedEmbedding,
    SearchPage,
    SearchRequest,
)
from tests.conftest import make_item

finite = st.floats(-60000, 60000, allow_nan=False, allow_infinity=False, width=32)


@given(arrays(np.float32, st.integers(1, 64), elements=finite))
def test_fp16_pack_roundtrip_within_half_precision(v):
    p = PackedEmbedding.pack(v, EmbeddingEncoding.FP16)
    assert len(p.data) == 2 * v.size
    back = p.unpack(v.size)
    np.testing.assert_allclose(back, v.astype(np.float16).astype(np.float32), rtol=0, atol=0)


@given(arrays(np.float32, st.integers(1, 64), elements=finite))
def test_int8_pack_roundtrip_error_bounded_by_half_a_step(v):
    p = PackedEmbedding.pack(v, EmbeddingEncoding.INT8)
    assert len(p.data) == v.size
    back = p.unpack(v.size)
    assert np.max(np.abs(back - v)) <= p.scale / 2 + 1e-6 * max(1.0, float(np.max(np.abs(v))))


def test_pack_rejects_non_finite_and_unpack_rejects_wrong_dim():
    with pytest.raises(ContractError):
        PackedEmbedding.pack(np.array([1.0, np.nan]))
    p = PackedEmbedding.pack(np.ones(4))
    with pytest.raises(ContractError, match="expected 8"):
        p.unpack(8)
    with pytest.raises(ContractError, match="odd"):
        PackedEmbedding(EmbeddingEncoding.FP16, b"abc").unpack()


def test_request_roundtrip_and_validation():
    r = SearchRequest("r1", "s1", "u1", "hotpot", Context(1.5, 2.5, 20, "android-low"), page_index=2, page_size=25)
    back = wire.request_from_proto(wire.parse(wire.pb.SearchRequest,
                                              wire.request_to_proto(r).SerializeToString()))
    assert back == r
    for bad in (dict(page_size=0), dict(page_size=101), dict(page_index=-1), dict(query="")):
        with pytest.raises(ContractError):
            SearchRequest(**{**dict(request_id="r", session_id="s", user_id="u", query="q"), **bad}).validate()


@pytest.mark.parametrize("encoding", [EmbeddingEncoding.FP16, EmbeddingEncoding.INT8])
def test_page_roundtrip_with_packed_embeddings(fcfg, encoding):
    rng = np.random.default_rng(0)
    items = [make_item(100 + k, rng, fcfg, k) for k in range(25)]
    items[3].embedding_found = False
    page = SearchPage("r", "s", 1, "v3", items, has_more=True)
    data = wire.page_to_proto(page, encoding).SerializeToString()
    back = wire.page_from_proto(wire.parse(wire.pb.SearchPage, data))
    assert (back.request_id, back.page_index, back.model_version, back.has_more) == ("r", 1, "v3", True)
    assert [i.item_id for i in back.items] == [i.item_id for i in items]
    assert not back.items[3].embedding_found and back.items[4].embedding_found
    tol = 2e-3 if encoding == EmbeddingEncoding.FP16 else 0.03
    for a, b in zip(items, back.items, strict=True):
        np.testing.assert_allclose(b.id_embedding, a.id_embedding, atol=tol * max(1, np.abs(a.id_embedding).max()))
        np.testing.assert_allclose(b.cloud_dense, a.cloud_dense, rtol=1e-6)
        assert (b.category, b.brand, b.price_level, b.cloud_position) == (a.category, a.brand, a.price_level,
                                                                           a.cloud_position)


def test_impression_and_log_batch_roundtrip(fcfg):
    rng = np.random.default_rng(1)
    items = [make_item(k, rng, fcfg, k) for k in range(5)]
    events = [FeedbackEvent.for_item(items[0], EventKind.EXPOSURE, 10, "r", 0, 1500.0),
              FeedbackEvent.for_item(items[1], EventKind.CLICK, 20, "r", 1),
              FeedbackEvent(ts_ms=30, request_id="r", item_id=-1, kind=EventKind.LEAVE)]
    row = ImpressionRow("r", "s", "u", "q", Context(1, 2, 3, "d"), 0, "v", "cloud",
                        [LoggedCandidate(it, k, exposed=k < 2, clicked=k == 1, click_step=1 if k == 1 else -1,
                                         first_exposure_step=0 if k == 0 else -1) for k, it in enumerate(items)],
                        events, [1, 3])
    back = wire.log_batch_from_bytes(wire.log_batch_to_bytes([row, row]))
    assert len(back) == 2
    b = back[0]
    assert b.rerank_points == [1, 3] and [e.kind for e in b.events] == [e.kind for e in events]
    assert b.events[2].id_embedding is None and b.events[0].id_embedding is not None
    assert [c.clicked for c in b.candidates] == [False, True, False, False, False]


def test_malformed_bytes_raise_contract_error():
    with pytest.raises(ContractError, match="malformed"):
        wire.parse(wire.pb.SearchRequest, b"\xff\xff\xff\xff")
    bad = wire.pb.ImpressionLog(rerank_points=[5])
    with pytest.raises(ContractError, match="rerank_points"):
        wire.impression_from_proto(bad)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_parsing_arbitrary_bytes_never_raises_anything_but_contract_error(data):
    for cls in (wire.pb.SearchRequest, wire.pb.SearchPage, wire.pb.LogBatch):
        try:
            msg = wire.parse(cls, data)
            if cls is wire.pb.SearchPage:
                wire.page_from_proto(msg)
            elif cls is wire.pb.LogBatch:
                [wire.impression_from_proto(r) for r in msg.rows]
        except ContractError:
            pass

"""The server's fast page encoding (pre-encoded items, served as bytes from the ranking cache) produces the
same message as the reference ``device_sdk.wire.page_to_proto``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_rerank.cloud.app import CloudConfig, create_app
from edge_rerank.cloud.page_codec import pack_rows
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import (
    Context,
    ContractError,
    EmbeddingEncoding,
    PackedEmbedding,
    PageItem,
    SearchPage,
    SearchRequest,
)


@pytest.mark.parametrize("encoding", ["fp16", "int8"])
def test_served_pages_equal_the_reference_encoding(cloud_data, encoding):
    app = create_app(CloudConfig(data_dir=str(cloud_data), embedding_encoding=encoding, model_version="mv"))
    p = app.extensions["edge_rerank.pipeline"]
    c = app.test_client()
    enc = EmbeddingEncoding.INT8 if encoding == "int8" else EmbeddingEncoding.FP16
    for user, query, page_index, size in [("u00001", "hotpot", 0, 25), ("u00001", "hotpot", 1, 25),
                                          ("nobody", "ramen", 0, 7), ("u00003", "food", 2, 100),
                                          ("u00004", "no such query", 0, 25)]:
        req = SearchRequest("rid", "sid", user, query, Context(3.0, 4.0, 9), page_index=page_index, page_size=size)
        body = wire.request_to_proto(req).SerializeToString()
        served = [c.post("/v1/search", data=body, content_type="application/x-protobuf") for _ in range(2)]
        assert served[0].status_code == 200 and served[0].data == served[1].data  # second one from the cache
        got = wire.parse(wire.pb.SearchPage, served[0].data)
        want = wire.page_to_proto(p.search(req), enc)
        assert got == want, (user, query, page_index)


@settings(max_examples=300)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(0, 20)),
              elements=st.floats(-1e4, 1e4, width=32) | st.sampled_from([0.0, 1e-35, -1e-38, 65504.0])))
def test_pack_rows_is_packedembedding_pack(rows):
    for enc in (EmbeddingEncoding.FP16, EmbeddingEncoding.INT8):
        data, scale = pack_rows(rows, enc)
        for k in range(rows.shape[0]):
            ref = PackedEmbedding.pack(rows[k], enc)
            assert data[k] == ref.data and np.float32(scale[k]) == np.float32(ref.scale)


_I32 = st.integers(-(2**31), 2**31 - 1)
_F64 = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0])


@st.composite
def _pages(draw):
    n, dd, ed = draw(st.integers(0, 6)), draw(st.integers(0, 20)), draw(st.integers(0, 20))
    floats32 = st.floats(-1e4, 1e4, width=32) | st.sampled_from([0.0, -0.0])
    return dict(
        item_id=np.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), dtype=np.int64),
        category=np.array(draw(st.lists(_I32, min_size=n, max_size=n)), dtype=np.int64),
        brand=np.array(draw(st.lists(_I32, min_size=n, max_size=n)), dtype=np.int64),
        price_level=np.array(draw(st.lists(_I32, min_size=n, max_size=n)), dtype=np.int64),
        lat=np.array(draw(st.lists(_F64, min_size=n, max_size=n)), dtype=np.float64),
        lon=np.array(draw(st.lists(_F64, min_size=n, max_size=n)), dtype=np.float64),
        start=draw(st.integers(0, 10_000)),
        scores=draw(arrays(np.float32, (n,), elements=floats32)),
        dense=draw(arrays(np.float32, (n, dd), elements=floats32)),
        emb=draw(arrays(np.float32, (n, ed), elements=floats32)),
        found=draw(arrays(np.bool_, (n,))),
        encoding=draw(st.sampled_from([EmbeddingEncoding.FP16, EmbeddingEncoding.INT8])))


@settings(max_examples=300, deadline=None)
@given(_pages())
def test_page_encoder_writes_what_the_reference_writes(page):
    """Every field's range (negative and 64-bit ids, zeros, -0.0, empty vectors, positions past the precomputed
    table, items not found in the store, both encodings): the directly written bytes parse to the message the
    reference ``wire`` encoder builds."""
    from edge_rerank.cloud.page_codec import PageEncoder

    n = len(page["item_id"])
    static = {k: page[k] for k in ("item_id", "category", "brand", "price_level", "lat", "lon")}
    enc = PageEncoder(**static, max_rows=2)  # a tiny cache: rows are dropped and re-encoded
    rows = np.arange(n)[::-1]  # pages show catalog rows in any order
    for _ in range(2):  # the second time from the per-row cache
        got = wire.parse(wire.pb.SearchPage, enc.encode(
            rows, start=page["start"], scores=page["scores"], dense=page["dense"], emb=page["emb"],
            found=page["found"], encoding=page["encoding"]))
        want = wire.page_to_proto(SearchPage("", "", 0, "", [PageItem(
            item_id=int(page["item_id"][r]), cloud_position=page["start"] + k, cloud_score=float(page["scores"][k]),
            cloud_dense=page["dense"][k], id_embedding=page["emb"][k], category=int(page["category"][r]),
            brand=int(page["brand"][r]), price_level=int(page["price_level"][r]), lat=float(page["lat"][r]),
            lon=float(page["lon"][r]), embedding_found=bool(page["found"][k])) for k, r in enumerate(rows)]),
            page["encoding"])
        assert got == want


def test_page_encoder_refuses_non_finite_embeddings():
    from edge_rerank.cloud.page_codec import PageEncoder

    one = np.zeros(1)
    enc = PageEncoder(item_id=one.astype(np.int64), category=one, brand=one, price_level=one, lat=one, lon=one)
    for bad in (np.nan, np.inf):
        with pytest.raises(ContractError, match="non-finite"):
            enc.encode(np.array([0]), start=0, scores=np.zeros(1), dense=np.zeros((1, 2)),
                       emb=np.array([[0.0, bad]]), found=np.ones(1, bool), encoding=EmbeddingEncoding.FP16)

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
from edge_rerank.device_sdk.contracts import Context, EmbeddingEncoding, PackedEmbedding, SearchRequest


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

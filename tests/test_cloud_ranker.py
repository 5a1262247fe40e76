"""The fine-ranker seam: the fixed-weight numpy ranker and the ONNX ranker (a tiny torch MLP exported to
the documented contract) behind one protocol, run with onnxruntime inside the app."""

import shutil

import numpy as np
import pytest

from edge_rerank.cloud.app import CloudConfig, create_app
from edge_rerank.cloud.ranking.fine import FEATURES, FineRanker, OnnxFineRanker, Ranker, RankerError, load_ranker
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import Context, SearchRequest

torch = pytest.importorskip("torch")
F, D = len(FEATURES), 12


class TinyRanker(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = torch.nn.Linear(F, D)
        self.head = torch.nn.Linear(D, 1)

    def forward(self, features):
        hidden = torch.tanh(self.l1(features))
        return self.head(hidden).squeeze(-1), hidden


def _export(model: torch.nn.Module, path, input_name="features", outputs=("score", "hidden")):
    x = torch.randn(7, F)
    dims = {input_name: {0: torch.export.Dim("n", min=1, max=100_000)}}
    with torch.no_grad():
        prog = torch.onnx.export(model, (x,), dynamo=True, input_names=[input_name], output_names=list(outputs),
                                 dynamic_shapes=({0: dims[input_name][0]},), opset_version=18,
                                 external_data=False, verbose=False)
    prog.save(str(path), external_data=False)
    return path


@pytest.fixture(scope="module")
def onnx_ranker_path(tmp_path_factory):
    return _export(TinyRanker().eval(), tmp_path_factory.mktemp("ranker") / "ranker.onnx")


def test_both_rankers_follow_one_protocol(cloud_data, onnx_ranker_path):
    npz = load_ranker(cloud_data)
    onx = OnnxFineRanker(onnx_ranker_path)
    for r in (npz, onx):
        assert isinstance(r, Ranker)
        x = np.random.default_rng(0).standard_normal((31, F)).astype(np.float32)
        s, h = r.forward(x)
        assert s.shape == (31,) and h.shape == (31, r.dense_dim) and s.dtype == h.dtype == np.float32
        s0, h0 = r.forward(x[:0])
        assert s0.shape == (0,) and h0.shape == (0, r.dense_dim)
    assert isinstance(npz, FineRanker) and npz.dense_dim == 16 and onx.dense_dim == D


def test_onnx_ranker_matches_torch(onnx_ranker_path):
    model = TinyRanker().eval()
    x = np.random.default_rng(1).standard_normal((200, F)).astype(np.float32)
    with torch.no_grad():
        ts, th = model(torch.from_numpy(x))
    s, h = OnnxFineRanker(onnx_ranker_path).forward(x)
    np.testing.assert_allclose(s, ts.numpy(), atol=1e-5)
    np.testing.assert_allclose(h, th.numpy(), atol=1e-5)


def test_app_serves_pages_ranked_by_the_onnx_model(cloud_data, onnx_ranker_path, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cloud_data, data)
    shutil.copyfile(onnx_ranker_path, data / "ranker.onnx")
    app = create_app(CloudConfig(data_dir=str(data)))
    c = app.test_client()
    assert c.get("/healthz").get_json()["ranker"] == "onnx"
    req = SearchRequest("r", "s", "u00001", "hotpot", Context(5, 5, 19), page_size=20)
    r = c.post("/v1/search", data=wire.request_to_proto(req).SerializeToString(), content_type="application/x-protobuf")
    assert r.status_code == 200
    page = wire.page_from_proto(wire.parse(wire.pb.SearchPage, r.data))
    assert len(page.items) == 20 and all(i.cloud_dense.shape == (D,) for i in page.items)
    scores = [i.cloud_score for i in page.items]
    assert scores == sorted(scores, reverse=True)
    # the page's dense vectors are the ONNX model's hidden layer for these items' features
    p = app.extensions["edge_rerank.pipeline"]
    ranking = p.rank(req)
    np.testing.assert_allclose(np.stack([i.cloud_dense for i in page.items]), ranking.hidden[:20], atol=1e-6)


def test_onnx_files_that_break_the_contract_are_clear_errors(tmp_path):
    with pytest.raises(RankerError, match="cannot load"):
        (tmp_path / "junk.onnx").write_bytes(b"not onnx")
        OnnxFineRanker(tmp_path / "junk.onnx")
    wrong = _export(TinyRanker().eval(), tmp_path / "wrong.onnx", input_name="x")
    with pytest.raises(RankerError, match="want input 'features'"):
        OnnxFineRanker(wrong)
    with pytest.raises(RankerError, match="neither ranker.onnx nor ranker.npz"):
        load_ranker(tmp_path)

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.app import CloudConfig, create_app
from edge_rerank.cloud.logs import read_logs
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import Context, SearchRequest

PB = "application/x-protobuf"


@pytest.fixture(scope="module")
def app(cloud_data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    return create_app(CloudConfig(data_dir=str(cloud_data), log_dir=str(logs), api_key="k3y", model_version="m1",
                                  max_body_bytes=256 * 1024, registry_dir=str(logs / "registry"),
                                  admin_key="adm1n", max_bundle_bytes=256 * 1024))


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def published(app, bundle_dir):
    """A published bundle (version "test") so fuzzed registry requests reach real files and promotions."""
    app.extensions["edge_rerank.registry"].publish(bundle_dir)
    return bundle_dir


def _req(**kw) -> bytes:
    base = dict(request_id="r", session_id="s", user_id="u00001", query="hotpot", context=Context(5, 5, 19))
    return wire.request_to_proto(SearchRequest(**{**base, **kw})).SerializeToString()


def test_search_returns_a_page_of_25_with_scores_dense_vectors_and_embeddings(client, world):
    r = client.post("/v1/search", data=_req(), content_type=PB)
    assert r.status_code == 200 and r.mimetype == PB
    page = wire.page_from_proto(wire.parse(wire.pb.SearchPage, r.data))
    assert len(page.items) == 25 and page.has_more and page.model_version == "m1"
    assert [i.cloud_position for i in page.items] == list(range(25))
    scores = [i.cloud_score for i in page.items]
    assert scores == sorted(scores, reverse=True)
    assert all(i.cloud_dense.shape == (16,) and i.id_embedding.shape == (16,) and i.embedding_found
               for i in page.items)
    rows = np.array([world.row_of(i.item_id) for i in page.items])
    np.testing.assert_allclose(np.stack([i.id_embedding for i in page.items]), world.emb_rows[rows], atol=2e-3)
    r2 = client.post("/v1/search", data=_req(page_index=1), content_type=PB)
    page2 = wire.page_from_proto(wire.parse(wire.pb.SearchPage, r2.data))
    assert {i.item_id for i in page.items}.isdisjoint(i.item_id for i in page2.items)
    assert page2.items[0].cloud_position == 25


def test_json_debugging_and_unknown_user_and_query(client):
    r = client.post("/v1/search", json={"request_id": "r", "user_id": "nobody", "query": "ramen", "page_size": 5},
                    headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.mimetype == "application/json" and len(r.get_json()["items"]) == 5
    r = client.post("/v1/search", data=_req(query="no such thing"), content_type=PB)
    assert r.status_code == 200 and len(wire.parse(wire.pb.SearchPage, r.data).items) == 0


@pytest.mark.parametrize("body,ctype,status,reason", [
    (b"\xff\xff\xff", PB, 400, "malformed"),
    (b"{", "application/json", 400, "malformed JSON"),
    (b"abc", "text/plain", 415, "Content-Type"),
    (None, PB, 400, "page_size"),
    (b"x" * (300 * 1024), PB, 413, ""),
])
def test_bad_requests_get_4xx_with_a_reason(client, body, ctype, status, reason):
    data = _req(page_size=500) if body is None else body
    r = client.post("/v1/search", data=data, content_type=ctype)
    assert r.status_code == status
    assert reason in r.get_json()["error"]


def test_logs_need_the_key_and_land_as_parquet(client, app, logged_rows):
    body = wire.log_batch_to_bytes(logged_rows[:5])
    assert client.post("/v1/logs", data=body, content_type=PB).status_code == 401
    assert client.post("/v1/logs", data=body, content_type=PB, headers={"X-API-Key": "wrong"}).status_code == 401
    r = client.post("/v1/logs", data=body, content_type=PB, headers={"X-API-Key": "k3y"})
    assert r.status_code == 200
    ack = wire.parse(wire.pb.LogAck, r.data)
    assert ack.accepted == 5
    back = read_logs(app.extensions["edge_rerank.logs"].root / ack.part)
    assert [b.request_id for b in back] == [x.request_id for x in logged_rows[:5]]
    empty = wire.pb.LogBatch().SerializeToString()
    assert client.post("/v1/logs", data=empty, content_type=PB, headers={"X-API-Key": "k3y"}).status_code == 400


def test_unknown_routes_and_methods_are_4xx(client):
    assert client.get("/v1/search").status_code == 405
    assert client.get("/v1/../../etc/passwd").status_code == 404


# CI runs 2,000 cases per fuzz test; bench/cloud_fuzz.py runs more (EDGE_RERANK_FUZZ_CASES)
FUZZ_CASES = int(os.environ.get("EDGE_RERANK_FUZZ_CASES", "2000"))
PATHS = ["/v1/search", "/v1/logs", "/v1/models", "/v1/models/device-reranker/promote",
         "/v1/models/device-reranker/rollback", "/v1/models/device-reranker/test",
         "/v1/models/device-reranker/test/files/../../manifest.json", "/v1/models/device-reranker/test/manifest",
         "/v1/models/device-reranker/test/files/feature_config.json", "/v1/models/device-reranker/assignment",
         "/metrics", "/healthz", "/ping"]


@settings(max_examples=FUZZ_CASES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300),
                      st.builds(lambda q, ps, pi, h: _req(query=q, page_size=ps, page_index=pi,
                                                          context=Context(1, 1, h)),
                                st.text(max_size=300), st.integers(-5, 200), st.integers(-5, 2000),
                                st.integers(-3, 30)),
                      st.builds(lambda v, p: f'{{"version": {v}, "rollout_percent": {p}}}'.encode(),
                                st.sampled_from(['"test"', '"v1"', '"../x"', "1", "null", '""']),
                                st.sampled_from(["0", "50", "100", "101", '"x"', "null", "1e309"]))),
       ctype=st.sampled_from([PB, "application/json", "text/plain", "", "application/x-tar"]),
       method=st.sampled_from(["POST", "GET", "PUT"]),
       key=st.sampled_from(["k3y", "adm1n", "", "\u00e9"]),
       path=st.sampled_from(PATHS))
def test_fuzz_no_5xx(client, published, body, ctype, method, key, path):
    r = client.open(path, method=method, data=body, content_type=ctype,
                    headers={"X-API-Key": key, "X-Admin-Key": key})
    assert r.status_code < 500, r.data[:200]


@settings(max_examples=FUZZ_CASES // 4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.sampled_from(list("abv1./%2F_-~")), max_size=40))
def test_fuzz_model_paths_no_5xx(client, published, path):
    for prefix in ("/v1/models/", "/v1/models/device-reranker/test/files/"):
        r = client.get(prefix + path)
        assert r.status_code < 500, (prefix + path, r.data[:200])

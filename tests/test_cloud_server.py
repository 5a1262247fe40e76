"""The service under real gunicorn with several workers: /metrics aggregates every worker (Prometheus
multiprocess mode), and a promotion through the admin API reaches every worker's pages."""

import io
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.serve import server_process
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import Context, SearchRequest

PB = {"Content-Type": "application/x-protobuf", "Accept": "application/x-protobuf"}


def _samples(text: str, name: str, **labels) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _search(url: str, user: str, page_index: int = 0) -> wire.pb.SearchPage:
    req = SearchRequest("r", "s", user, "hotpot", Context(5, 5, 19), page_index=page_index)
    # a new connection per request: gunicorn's sync workers spread them over the workers
    r = requests.post(url + "/v1/search", data=wire.request_to_proto(req).SerializeToString(), headers=PB, timeout=10)
    assert r.status_code == 200
    return wire.parse(wire.pb.SearchPage, r.content)


def test_metrics_aggregate_all_workers_and_promotion_reaches_them(cloud_data, bundle_dir, tmp_path):
    cfg = CloudConfig(data_dir=str(cloud_data), registry_dir=str(tmp_path / "registry"), admin_key="a",
                      model_version="fallback")
    with server_process(cfg, workers=2, log_file=tmp_path / "server.log") as server:
        url = server.url
        deadline = time.monotonic() + 30
        with ThreadPoolExecutor(4) as pool:  # until both workers have served (each writes its own files)
            while len(list(server.metrics_dir.glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
                list(pool.map(lambda _: requests.get(url + "/healthz", timeout=10), range(8)))
        assert len(list(server.metrics_dir.glob("counter_*.db"))) == 2, "both workers are up"
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: requests.get(url + "/ping", timeout=10).status_code, range(80)))
            pages = list(pool.map(lambda i: _search(url, f"u{i:05d}"), range(40)))
        assert codes == [200] * 80 and all(len(p.items) == 25 for p in pages)
        for _ in range(4):  # whichever worker answers the scrape reports every worker's counts
            text = requests.get(url + "/metrics", timeout=10).text
            assert _samples(text, "edge_rerank_http_requests_total", endpoint="/ping", status="200") == 80
            assert _samples(text, "edge_rerank_http_requests_total", endpoint="/v1/search", status="200") == 40
            assert _samples(text, "edge_rerank_embedding_lookups_total", result="hit") == 40 * 25
            assert _samples(text, "edge_rerank_ranking_cache_total") == 40
            assert _samples(text, "edge_rerank_http_request_duration_seconds_count", endpoint="/v1/search") == 40

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            t.add(bundle_dir, arcname="bundle")
        r = requests.put(url + "/v1/models/device-reranker/test", data=buf.getvalue(), headers={"X-Admin-Key": "a"},
                         timeout=30)
        assert r.status_code == 201, r.text
        assert {_search(url, f"u{i:05d}").model_version for i in range(10)} == {"fallback"}
        r = requests.post(url + "/v1/models/device-reranker/promote", json={"version": "test"},
                          headers={"X-Admin-Key": "a"}, timeout=10)
        assert r.status_code == 200
        # the worker that promoted serves the new version at once; the other re-checks the registry state at
        # most once per Registry.state_check_s (1 s): after that, every worker does
        time.sleep(1.1)
        with ThreadPoolExecutor(4) as pool:
            versions = set(pool.map(lambda i: _search(url, f"u{i:05d}").model_version, range(30)))
        assert versions == {"device-reranker@test"}

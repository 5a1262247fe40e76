"""How the simulated phone reaches the cloud: its real HTTP API, protobuf on the wire."""

from __future__ import annotations

import time
from typing import Protocol

import requests

from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import ImpressionRow, SearchPage, SearchRequest

PROTOBUF = "application/x-protobuf"


class CloudTransport(Protocol):
    def search(self, req: SearchRequest) -> SearchPage: ...

    def post_logs(self, rows: list[ImpressionRow]) -> int: ...


MAX_QUOTA_RETRIES = 8
MAX_RETRY_AFTER_S = 30.0


class CloudError(RuntimeError):
    pass


class HttpCloud:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = requests.Session()
        self._headers = {"Content-Type": PROTOBUF, "Accept": PROTOBUF}
        if api_key:
            self._headers["X-API-Key"] = api_key
        self.requests = 0
        self.bytes_received = 0

    def _post(self, path: str, body: bytes) -> bytes:
        for attempt in range(MAX_QUOTA_RETRIES + 1):  # a 429 (upload quota) is waited out as Retry-After says
            r = self._http.post(self.base_url + path, data=body, headers=self._headers, timeout=self.timeout_s)
            self.requests += 1
            if r.status_code != 429 or attempt == MAX_QUOTA_RETRIES:
                break
            try:
                wait = float(r.headers.get("Retry-After", "1"))
            except ValueError:
                wait = 1.0
            time.sleep(min(max(wait, 0.05), MAX_RETRY_AFTER_S))
        if r.status_code != 200:
            raise CloudError(f"{path}: HTTP {r.status_code}: {r.text[:200]}")
        self.bytes_received += len(r.content)
        return r.content

    def search(self, req: SearchRequest) -> SearchPage:
        data = self._post("/v1/search", wire.request_to_proto(req).SerializeToString())
        return wire.page_from_proto(wire.parse(wire.pb.SearchPage, data))

    def post_logs(self, rows: list[ImpressionRow]) -> int:
        data = self._post("/v1/logs", wire.log_batch_to_bytes(rows, client_id="simulator"))
        return int(wire.parse(wire.pb.LogAck, data).accepted)

    def close(self) -> None:
        self._http.close()


class InProcessCloud:
    """The cloud's own search pipeline called in-process. For large runs and calibration; the demo uses HTTP.

    ``wire=True`` (default) sends every request and page through the same protobuf round trip as HTTP.
    ``wire=False`` skips the serialisation and applies only what it changes (fp16 embedding rows; scores and
    dense vectors are float32 in the contracts already), so pages are identical (tests/test_simulator_arms.py
    checks it) at a fraction of the cost."""

    def __init__(self, data_dir: str, *, model_version: str = "", wire: bool = True):
        from edge_rerank.cloud.catalog import load_catalog
        from edge_rerank.cloud.embedding_store import FileEmbeddingStore
        from edge_rerank.cloud.ranking.coarse import load_coarse
        from edge_rerank.cloud.ranking.fine import load_ranker
        from edge_rerank.cloud.ranking.pipeline import SearchPipeline

        ranker = load_ranker(data_dir)  # ranker.onnx (trained) when present, like the server
        catalog = load_catalog(data_dir)
        self._pipeline = SearchPipeline(catalog, FileEmbeddingStore(f"{data_dir}/embeddings"), ranker,
                                        model_version=model_version,
                                        coarse=load_coarse(data_dir, catalog))  # <data_dir>/coarse, like the server
        self.logged: list[ImpressionRow] = []
        self.wire = wire
        # later pages of a search are slices of the ranking the pipeline's own cache keeps (one ranking per search)

    def search(self, req: SearchRequest) -> SearchPage:
        if not self.wire:
            # what the fp16 wire encoding does to the rows (one conversion for the page)
            return self._pipeline.search_with_info(req, fp16_rows=True)[0]
        page = self._pipeline.search(wire.request_from_proto(wire.request_to_proto(req)))
        return wire.page_from_proto(wire.parse(wire.pb.SearchPage, wire.page_to_proto(page).SerializeToString()))

    def post_logs(self, rows: list[ImpressionRow]) -> int:
        self.logged.extend(rows)
        return len(rows)

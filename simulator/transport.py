"""How the simulated phone reaches the cloud: its real HTTP API, protobuf on the wire."""

from __future__ import annotations

from typing import Protocol

import requests

from device_sdk import wire
from device_sdk.contracts import ImpressionRow, SearchPage, SearchRequest

PROTOBUF = "application/x-protobuf"


class CloudTransport(Protocol):
    def search(self, req: SearchRequest) -> SearchPage: ...

    def post_logs(self, rows: list[ImpressionRow]) -> int: ...


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
        r = self._http.post(self.base_url + path, data=body, headers=self._headers, timeout=self.timeout_s)
        self.requests += 1
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
    """The cloud's own search pipeline called in-process, through the same protobuf round trip as HTTP
    (so both transports return identical pages). For large runs and calibration; the demo uses HTTP."""

    def __init__(self, data_dir: str, *, model_version: str = ""):
        import numpy as np

        from cloud.catalog import load_catalog
        from cloud.embedding_store import FileEmbeddingStore
        from cloud.ranking.fine import FineRanker
        from cloud.ranking.pipeline import SearchPipeline

        with np.load(f"{data_dir}/ranker.npz") as z:
            ranker = FineRanker.from_weights(dict(z))
        self._pipeline = SearchPipeline(load_catalog(data_dir), FileEmbeddingStore(f"{data_dir}/embeddings"), ranker,
                                        model_version=model_version)
        self.logged: list[ImpressionRow] = []

    def search(self, req: SearchRequest) -> SearchPage:
        page = self._pipeline.search(wire.request_from_proto(wire.request_to_proto(req)))
        return wire.page_from_proto(wire.parse(wire.pb.SearchPage, wire.page_to_proto(page).SerializeToString()))

    def post_logs(self, rows: list[ImpressionRow]) -> int:
        self.logged.extend(rows)
        return len(rows)

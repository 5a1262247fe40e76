"""The cloud companion's Flask app factory. Protobuf by default; JSON for debugging (Content-Type /
Accept ``application/json``). Bad input -> 4xx with a reason, never a 5xx."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from google.protobuf import json_format
from werkzeug.exceptions import HTTPException

from cloud.catalog import load_catalog
from cloud.embedding_store import FileEmbeddingStore
from cloud.logs import LogSink
from cloud.ranking.fine import FineRanker
from cloud.ranking.pipeline import SearchPipeline
from device_sdk import wire
from device_sdk.contracts import ContractError, EmbeddingEncoding

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass
class CloudConfig:
    data_dir: str
    log_dir: str | None = None  # where accepted impression logs go (Parquet parts); None disables /v1/logs
    api_key: str | None = None  # required on /v1/logs when set
    model_version: str = ""  # the device model version pages advertise
    embedding_encoding: str = "fp16"  # "fp16" | "int8"
    max_body_bytes: int = 8 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason, self.status = reason, status


def _read_message(msg_cls):
    ctype = (request.mimetype or "").lower()
    body = request.get_data(cache=False)
    if ctype == PROTOBUF:
        try:
            return wire.parse(msg_cls, body)
        except ContractError as exc:
            raise BadRequest(str(exc)) from exc
    if ctype == JSON:
        try:
            return json_format.Parse(body.decode("utf-8"), msg_cls())
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest(f"malformed JSON {msg_cls.__name__}: {exc}") from exc
    raise BadRequest(f"Content-Type must be {PROTOBUF} or {JSON}, got {ctype or 'none'!r}", 415)


def _respond(msg) -> Response:
    if request.accept_mimetypes.best == JSON:
        return Response(json_format.MessageToJson(msg, preserving_proto_field_name=True), mimetype=JSON)
    return Response(msg.SerializeToString(), mimetype=PROTOBUF)


api = Blueprint("api", __name__)


@api.get("/healthz")
def healthz():
    p: SearchPipeline = current_app.extensions["edge_rerank.pipeline"]
    return jsonify(status="ok", items=p.catalog.n_items, model_version=p.model_version)


@api.post("/v1/search")
def search():
    cfg: CloudConfig = current_app.extensions["edge_rerank.config"]
    p: SearchPipeline = current_app.extensions["edge_rerank.pipeline"]
    msg = _read_message(wire.pb.SearchRequest)
    try:
        req = wire.request_from_proto(msg).validate()
        page = p.search(req)
    except ContractError as exc:
        raise BadRequest(str(exc)) from exc
    enc = EmbeddingEncoding.INT8 if cfg.embedding_encoding == "int8" else EmbeddingEncoding.FP16
    return _respond(wire.page_to_proto(page, enc))


@api.post("/v1/logs")
def logs():
    cfg: CloudConfig = current_app.extensions["edge_rerank.config"]
    sink: LogSink | None = current_app.extensions["edge_rerank.logs"]
    if sink is None:
        raise BadRequest("log ingestion is not enabled on this server", 404)
    if cfg.api_key is not None:
        given = request.headers.get("X-API-Key", "")
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise BadRequest("missing or wrong X-API-Key", 401)
    msg = _read_message(wire.pb.LogBatch)
    try:
        rows = [wire.impression_from_proto(r) for r in msg.rows]
    except ContractError as exc:
        raise BadRequest(str(exc)) from exc
    if not rows:
        raise BadRequest("empty LogBatch")
    part = sink.append(rows)
    return _respond(wire.pb.LogAck(accepted=len(rows), part=part))


def create_app(config: CloudConfig) -> Flask:
    app = Flask("edge_rerank.cloud")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    if config.embedding_encoding not in ("fp16", "int8"):
        raise ValueError("embedding_encoding must be 'fp16' or 'int8'")
    root = Path(config.data_dir)
    catalog = load_catalog(root)
    store = FileEmbeddingStore(root / "embeddings")
    with np.load(root / "ranker.npz") as z:
        ranker = FineRanker.from_weights(dict(z))
    app.extensions["edge_rerank.config"] = config
    app.extensions["edge_rerank.pipeline"] = SearchPipeline(catalog, store, ranker, model_version=config.model_version)
    app.extensions["edge_rerank.logs"] = LogSink(config.log_dir) if config.log_dir else None
    app.register_blueprint(api)

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        return jsonify(error=exc.reason), exc.status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return jsonify(error=exc.description or exc.name), exc.code

    return app

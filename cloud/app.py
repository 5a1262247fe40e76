"""The cloud companion's Flask app factory. Protobuf by default; JSON for debugging (Content-Type /
Accept ``application/json``). Bad input -> 4xx with a reason, never a 5xx.

Blueprints: ``health`` (/ping, /healthz, /metrics), ``search`` (/v1/search), ``models`` (registry and
delivery under /v1/models), ``logs`` (/v1/logs). See docs/cloud.md for the API.
"""

from __future__ import annotations

import hmac
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_file
from google.protobuf import json_format
from werkzeug.exceptions import HTTPException
from werkzeug.sansio.utils import get_content_length

from edge_rerank.cloud import prometheus
from edge_rerank.cloud.catalog import load_catalog
from edge_rerank.cloud.embedding_store import open_store
from edge_rerank.cloud.log_ingest import (
    IngestError,
    IngestLimits,
    json_depth_ok,
    parse_rows,
    row_from_message,
    split_rows,
)
from edge_rerank.cloud.logs import LogSink
from edge_rerank.cloud.page_codec import page_head, search_request
from edge_rerank.cloud.quota import FileQuota, QuotaConfig, QuotaExceeded
from edge_rerank.cloud.ranking.coarse import load_coarse
from edge_rerank.cloud.ranking.fine import load_ranker
from edge_rerank.cloud.ranking.pipeline import SearchPipeline
from edge_rerank.cloud.registry import Registry, RegistryError, user_bucket
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.bundle import BundleError
from edge_rerank.device_sdk.contracts import ContractError, EmbeddingEncoding

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


@dataclass
class CloudConfig:
    data_dir: str
    log_dir: str | None = None  # where accepted impression logs go (Parquet parts); None disables /v1/logs
    api_key: str | None = None  # required on /v1/logs when set
    model_version: str = ""  # the device model version pages advertise when the registry assigns none
    embedding_encoding: str = "fp16"  # "fp16" | "int8"
    max_body_bytes: int = 8 * 1024 * 1024
    embedding_store: str = "file"  # "file" (data_dir/embeddings, memmap) | "redis"
    redis_url: str | None = None
    redis_prefix: str = "emb"
    registry_dir: str | None = None  # model registry; None disables /v1/models
    admin_key: str | None = None  # required to publish/promote/roll back; None disables those endpoints
    model_name: str = "device-reranker"  # the registry model whose assignment pages advertise
    registry_check_s: float = 1.0  # assignments re-check the registry state at most this often (Registry.state_check_s)
    ranking_cache_size: int = 4096  # rankings kept per worker for later pages of a search (0: off)
    ranking_cache_bytes: int = 64 << 20  # and at most this many bytes of them per worker
    max_bundle_bytes: int = 256 * 1024 * 1024  # upload limit for publishing a bundle archive
    allow_anonymous_logs: bool = False  # accept /v1/logs without an api_key (serve --insecure; local runs only)
    max_log_rows: int = 4096  # rows per /v1/logs request (413 above)
    max_json_body_bytes: int = 512 * 1024  # JSON bodies (debugging) are parsed into Python objects: kept small
    max_json_depth: int = 32  # nesting of JSON bodies, checked before parsing
    quota_rows_per_s: float = 2000.0  # per-key /v1/logs quota, shared by the workers (0: none)
    quota_burst_rows: int = 16384
    quota_bytes_per_day: int = 8 << 30  # (0: none)
    fusion: bool = True  # an RL fusion policy (registry "fusion-policy" or data_dir/fusion) when one exists


class BadRequest(Exception):
    """A 4xx with a reason; `close` closes the connection after the answer (the body was not read to its end),
    `headers` are added to the answer (Retry-After)."""

    def __init__(self, reason: str, status: int = 400, *, close: bool = False, headers: dict | None = None):
        super().__init__(reason)
        self.reason, self.status, self.close, self.headers = reason, status, close, headers or {}


def _cfg() -> CloudConfig:
    return current_app.extensions["edge_rerank.config"]


_READ_CHUNK = 64 * 1024


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a server's input stream raises for a broken body (bad chunked framing, early EOF)."""
    errs: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError)
    try:
        from gunicorn.http.errors import ParseException

        errs += (ParseException,)
    except ImportError:  # another WSGI server
        pass
    return errs


_STREAM_ERRORS = _stream_errors()


def _read_body(limit: int | None = None, environ: dict | None = None) -> bytes:
    """The request body, at most `limit` bytes (default: the app's max_body_bytes). With a Content-Length, one
    read of exactly that many bytes (413 first when it is over the limit); chunked or length-less bodies are read
    in pieces and refused with 413 as soon as they pass the limit (never cut). A broken body (malformed chunked
    framing, a client that stops early) is a 400; either way the connection is closed afterwards.

    Reads the WSGI environ directly (what ``request.content_length`` / ``max_content_length`` compute, without
    building the request's header and proxy objects): this runs on every search request."""
    if environ is None:
        environ = request.environ
    if limit is None:
        limit = _cfg().max_body_bytes  # == app.config["MAX_CONTENT_LENGTH"] (create_app sets it)
    te = environ.get("HTTP_TRANSFER_ENCODING")
    n = get_content_length(environ.get("CONTENT_LENGTH"), te)
    if n is not None and not (te and te.lower() == "chunked"):
        if limit is not None and n > limit:
            raise BadRequest(f"body of {n} bytes is over this endpoint's limit of {limit} bytes", 413, close=True)
        try:
            data = environ["wsgi.input"].read(n) if n else b""
        except _STREAM_ERRORS as exc:
            raise BadRequest(f"malformed request body: {type(exc).__name__}: {str(exc)[:120]}", close=True) from None
        if len(data) != n:
            raise BadRequest(f"body ended after {len(data)} of {n} bytes", close=True)
        return data
    buf = bytearray()
    _copy_body(buf, limit)
    return bytes(buf)


def _copy_body(out, limit: int | None) -> int:
    """Copy the body into `out` (a bytearray or a binary file) piece by piece; 413 past `limit`, 400 when the
    stream breaks. Returns the byte count."""
    stream, n = request.environ["wsgi.input"], 0
    declared = request.content_length
    if declared is not None and limit is not None and declared > limit:
        raise BadRequest(f"body of {declared} bytes is over this endpoint's limit of {limit} bytes", 413, close=True)
    try:
        while True:
            piece = stream.read(_READ_CHUNK)
            if not piece:
                break
            n += len(piece)
            if limit is not None and n > limit:
                raise BadRequest(f"body over this endpoint's limit of {limit} bytes", 413, close=True)
            if isinstance(out, bytearray):
                out += piece
            else:
                out.write(piece)
    except _STREAM_ERRORS as exc:
        raise BadRequest(f"malformed request body: {type(exc).__name__}: {str(exc)[:120]}", close=True) from None
    if declared is not None and n != declared:
        raise BadRequest(f"body ended after {n} of {declared} bytes", close=True)
    return n


def _json_text(body: bytes) -> str:
    cfg = _cfg()
    if len(body) > cfg.max_json_body_bytes:
        raise BadRequest(f"JSON body of {len(body)} bytes is over the JSON limit of {cfg.max_json_body_bytes} "
                         f"bytes (send protobuf)", 413)
    if not json_depth_ok(body, cfg.max_json_depth):
        raise BadRequest(f"JSON nested deeper than {cfg.max_json_depth} levels")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"JSON body is not UTF-8: {exc}") from None


def _read_message(msg_cls, body: bytes | None = None, *, environ: dict | None = None, limit: int | None = None):
    if environ is None:
        environ = request.environ
    ctype = environ.get("CONTENT_TYPE", "")
    if ctype != PROTOBUF:  # the common case needs no Content-Type parsing
        ctype = (request.mimetype or "").lower()
    if ctype not in (PROTOBUF, JSON):
        raise BadRequest(f"Content-Type must be {PROTOBUF} or {JSON}, got {ctype or 'none'!r}", 415)
    body = _read_body(limit, environ) if body is None else body
    if ctype == PROTOBUF:
        try:
            return wire.parse(msg_cls, body)
        except ContractError as exc:
            raise BadRequest(str(exc)) from exc
    try:
        return json_format.Parse(_json_text(body), msg_cls())
    except (json_format.ParseError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON {msg_cls.__name__}: {exc}") from exc


def _wants_json(environ: dict | None = None) -> bool:
    accept = (request.environ if environ is None else environ).get("HTTP_ACCEPT", "")  # == headers.get("Accept", "")
    return "json" in accept and request.accept_mimetypes.best == JSON


def _respond(msg) -> Response:
    if _wants_json():
        return Response(json_format.MessageToJson(msg, preserving_proto_field_name=True), mimetype=JSON)
    return Response(msg.SerializeToString(), mimetype=PROTOBUF)


def _check_key(header: str, expected: str | None, what: str) -> None:
    if expected is None:
        return
    given = request.headers.get(header, "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
        raise BadRequest(f"missing or wrong {header} ({what})", 401)


# ---- health -------------------------------------------------------------------------------------------
health = Blueprint("health", __name__)


@health.route("/ping", methods=["GET", "POST"])
def ping():
    """Bare liveness. POST reads (and ignores) the body: the HTTP cost of a search without its work."""
    if request.method == "POST":
        _read_body()
    return Response(b"pong", mimetype="text/plain")


@health.get("/healthz")
def healthz():
    p: SearchPipeline = current_app.extensions["edge_rerank.pipeline"]
    return jsonify(status="ok", items=p.catalog.n_items, model_version=p.model_version,
                   ranker=getattr(p.ranker, "kind", type(p.ranker).__name__), embedding_store=_cfg().embedding_store,
                   coarse={"kind": getattr(p.coarse, "kind", type(p.coarse).__name__),
                           "version": getattr(p.coarse, "version", ""), "reason": getattr(p.coarse, "reason", "")})


@health.get("/metrics")
def metrics_view():
    body, ctype = prometheus.render()
    return Response(body, content_type=ctype)


# ---- search -------------------------------------------------------------------------------------------
search_bp = Blueprint("search", __name__)


@search_bp.post("/v1/search")
def search():
    environ = request.environ  # read once: each use of the request / app proxies costs a context lookup
    ext = current_app.extensions
    cfg: CloudConfig = ext["edge_rerank.config"]
    p: SearchPipeline = ext["edge_rerank.pipeline"]
    reg: Registry | None = ext["edge_rerank.registry"]
    msg = _read_message(wire.pb.SearchRequest, environ=environ, limit=cfg.max_body_bytes)
    enc = EmbeddingEncoding.INT8 if cfg.embedding_encoding == "int8" else EmbeddingEncoding.FP16
    try:
        req = search_request(msg)
        items, has_more, info = p.search_encoded(req, enc)  # validates the request
    except ContractError as exc:
        raise BadRequest(str(exc)) from exc
    model_version = p.model_version
    if reg is not None:
        try:
            version = reg.assign(cfg.model_name, req.user_id)
        except RegistryError:  # model not published yet
            version = None
        if version is not None:
            model_version = f"{cfg.model_name}@{version}"
    prometheus.count_cache(info.cache_hit)
    if info.emb_found or info.emb_missing:
        prometheus.count_embedding_lookups(cfg.embedding_store, info.emb_found, info.emb_missing)
    # a SearchPage is its header fields followed by its (pre-encoded) items: protobuf concatenation
    head = page_head(req.request_id, req.session_id, req.page_index, model_version, has_more)
    if _wants_json(environ):
        return _respond(wire.pb.SearchPage.FromString(head + items))
    return Response(head + items, mimetype=PROTOBUF)


# ---- model registry and delivery ----------------------------------------------------------------------
models = Blueprint("models", __name__, url_prefix="/v1/models")


def _registry() -> Registry:
    reg = current_app.extensions["edge_rerank.registry"]
    if reg is None:
        raise BadRequest("the model registry is not enabled on this server", 404)
    return reg


def _admin() -> Registry:
    reg = _registry()
    key = _cfg().admin_key
    if key is None:
        raise BadRequest("admin endpoints are disabled: the server has no admin key", 403)
    _check_key("X-Admin-Key", key, "admin")
    return reg


def _model_json(reg: Registry, name: str) -> dict:
    s = reg.state(name)
    return {"name": name, "stable": s.stable, "candidate": s.candidate, "rollout_percent": s.rollout_percent,
            "history": s.history, "versions": reg.versions(name)}


@models.get("")
def list_models():
    reg = _registry()
    return jsonify(models=[_model_json(reg, n) for n in reg.names()])


@models.get("/<name>")
def get_model(name: str):
    return jsonify(_model_json(_registry(), name))


@models.get("/<name>/assignment")
def assignment(name: str):
    reg = _registry()
    user = request.args.get("user_id", "")
    if not 1 <= len(user) <= 128:
        raise BadRequest("user_id query parameter must be 1..128 characters")
    version = reg.assign(name, user)
    return jsonify(name=name, version=version, bucket=user_bucket(name, user),
                   model_version=f"{name}@{version}" if version else None)


def _send(name: str, version: str, rel: str) -> Response:
    path, sha = _registry().file(name, version, rel)
    resp = send_file(path, mimetype=JSON if rel.endswith(".json") else "application/octet-stream",
                     conditional=True, etag=sha, max_age=3600)
    resp.headers["X-Content-SHA256"] = sha
    return resp


@models.get("/<name>/<version>/manifest")
def get_manifest(name: str, version: str):
    return _send(name, version, "manifest.json")


@models.get("/<name>/<version>/manifest.sig")
def get_signature(name: str, version: str):
    return _send(name, version, "manifest.sig")


@models.get("/<name>/<version>/files/<path:rel>")
def get_file(name: str, version: str, rel: str):
    return _send(name, version, rel)


@models.put("/<name>/<version>")
def publish(name: str, version: str):
    reg = _admin()
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as f:  # archives up to 256 MiB: spooled, not in memory
        _copy_body(f, _cfg().max_bundle_bytes)
        f.seek(0)
        m = reg.publish_archive(f, name=name, version=version)
    prometheus.MODEL_EVENTS.labels("publish").inc()
    return jsonify(name=m.name, version=m.version, files=m.files), 201


def _json_body() -> dict:
    """A small JSON object body (admin calls); empty body -> {}."""
    body = _read_body(64 * 1024)
    if not body.strip():
        return {}
    try:
        obj = json.loads(_json_text(body))
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body must be a JSON object: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object")
    return obj


@models.post("/<name>/promote")
def promote(name: str):
    reg = _admin()
    body = _json_body()
    version = body.get("version")
    if not isinstance(version, str):
        raise BadRequest('body needs "version" (string)')
    s = reg.promote(name, version, body.get("rollout_percent", 100))
    prometheus.MODEL_EVENTS.labels("promote").inc()
    return jsonify(_model_json(reg, name) | {"stable": s.stable})


@models.post("/<name>/rollback")
def rollback(name: str):
    reg = _admin()
    reg.rollback(name)
    prometheus.MODEL_EVENTS.labels("rollback").inc()
    return jsonify(_model_json(reg, name))


# ---- logs ---------------------------------------------------------------------------------------------
logs_bp = Blueprint("logs", __name__)


_LOG_SLICE = 64  # rows converted and written at a time: bounds the Python objects alive per request


def _slices(rows, n: int):
    """Rows in lists of `n`. Between slices the worker yields (``time.sleep(0)`` is a cooperative switch under
    gevent workers), so a large upload does not hold up the worker's other connections for its whole duration."""
    out = []
    for r in rows:
        out.append(r)
        if len(out) == n:
            yield out
            out = []
            time.sleep(0)
    if out:
        yield out


@logs_bp.post("/v1/logs")
def logs():
    cfg = _cfg()
    sink: LogSink | None = current_app.extensions["edge_rerank.logs"]
    if sink is None:
        raise BadRequest("log ingestion is not enabled on this server", 404)
    _check_key("X-API-Key", cfg.api_key, "logs")
    limits: IngestLimits = current_app.extensions["edge_rerank.ingest_limits"]
    ctype = (request.mimetype or "").lower()
    body = _read_body()
    try:
        if ctype == PROTOBUF:
            encoded = split_rows(body, limits)  # no parse: 413 past the row limit
            n_rows, rows = len(encoded), parse_rows(encoded, limits)
        else:
            msg = _read_message(wire.pb.LogBatch, body)
            if len(msg.rows) > limits.max_rows:
                raise IngestError(f"more than {limits.max_rows} rows in one request: split the batch", 413)
            n_rows, rows = len(msg.rows), (row_from_message(k, m, limits) for k, m in enumerate(msg.rows))
        if not n_rows:
            raise BadRequest("empty LogBatch")
        quota: FileQuota | None = current_app.extensions["edge_rerank.quota"]
        if quota is not None:
            who = request.headers.get("X-API-Key") if cfg.api_key else f"ip:{request.remote_addr}"
            quota.charge(who or "", n_rows, len(body))
        del body
        part, accepted = sink.append_slices(_slices(rows, _LOG_SLICE))  # fsynced and renamed before the ack
    except IngestError as exc:
        raise BadRequest(exc.reason, exc.status) from None
    except QuotaExceeded as exc:
        raise BadRequest(exc.reason, 429, headers={"Retry-After": str(exc.retry_after_s)}) from None
    prometheus.LOG_ROWS.inc(accepted)
    return _respond(wire.pb.LogAck(accepted=accepted, part=part))


def _load_fusion(root: Path, registry: Registry | None, ranker):
    """The RL fusion policy if one is configured and the ranker has click / order heads; any fault loading it
    keeps the default single-head ranking (logged)."""
    from edge_rerank.cloud.ranking.rl_fusion import load_fusion

    try:
        fusion = load_fusion(root, registry)
    except Exception as exc:  # a broken policy must not stop search: SingleHead serves
        log.error("RL fusion policy not loaded (%s: %s); ranking by the single score head", type(exc).__name__, exc)
        return None
    if fusion is not None and not set(getattr(ranker, "head_names", ())) >= {"click", "order"}:
        log.error("RL fusion policy ignored: the ranker has no click / order heads (train one: edge-rerank fusion)")
        return None
    return fusion


def create_app(config: CloudConfig) -> Flask:
    app = Flask("edge_rerank.cloud")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.url_map.merge_slashes = False  # "files//etc/passwd" is a 404, not a redirect to a cleaned path
    if config.embedding_encoding not in ("fp16", "int8"):
        raise ValueError("embedding_encoding must be 'fp16' or 'int8'")
    if config.log_dir and not config.api_key and not config.allow_anonymous_logs:
        raise ValueError("log ingestion without an api_key accepts anyone's uploads: set api_key, or "
                         "allow_anonymous_logs=True (serve --insecure) for a local run")
    root = Path(config.data_dir)
    catalog = load_catalog(root)
    store = open_store(config.embedding_store, data_dir=root, redis_url=config.redis_url,
                       redis_prefix=config.redis_prefix)
    ranker = load_ranker(root)
    registry = Registry(config.registry_dir, state_check_s=config.registry_check_s) if config.registry_dir else None
    coarse = load_coarse(root, catalog, store_kind=config.embedding_store, redis_url=config.redis_url,
                         registry=registry)
    fusion = _load_fusion(root, registry, ranker) if config.fusion else None  # None: SingleHead (the default)
    app.extensions["edge_rerank.config"] = config
    app.extensions["edge_rerank.pipeline"] = SearchPipeline(catalog, store, ranker, model_version=config.model_version,
                                                            cache_size=config.ranking_cache_size,
                                                            cache_bytes=config.ranking_cache_bytes, coarse=coarse,
                                                            **({"fusion": fusion} if fusion is not None else {}))
    app.extensions["edge_rerank.fusion"] = fusion
    app.extensions["edge_rerank.logs"] = LogSink(config.log_dir) if config.log_dir else None
    app.extensions["edge_rerank.ingest_limits"] = IngestLimits(
        max_rows=config.max_log_rows, emb_dim=store.dim, dense_dim=getattr(ranker, "dense_dim", None))
    quota = QuotaConfig(config.quota_rows_per_s, config.quota_burst_rows, config.quota_bytes_per_day)
    quota_on = config.log_dir and (quota.rows_per_s > 0 or quota.bytes_per_day > 0)
    app.extensions["edge_rerank.quota"] = FileQuota(Path(config.log_dir) / ".quota", quota) if quota_on else None
    app.extensions["edge_rerank.registry"] = registry
    for bp in (health, search_bp, models, logs_bp):
        app.register_blueprint(bp)

    @app.before_request
    def _t0():
        g.t0 = time.perf_counter()

    @app.after_request
    def _observe(resp: Response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if rule != "/metrics":
            prometheus.observe_latency(rule, time.perf_counter() - g.get("t0", time.perf_counter()))
        method = request.method if request.method in _METHODS else "other"
        prometheus.count_request(rule, method, resp.status_code)
        return resp

    @app.errorhandler(BadRequest)
    def _bad(exc: BadRequest):
        resp = jsonify(error=exc.reason)
        resp.status_code = exc.status
        resp.headers.update(exc.headers)
        if exc.close:
            resp.headers["Connection"] = "close"
        return resp

    @app.errorhandler(RegistryError)
    def _reg(exc: RegistryError):
        return jsonify(error=exc.reason), exc.status

    @app.errorhandler(BundleError)
    def _bundle(exc: BundleError):
        return jsonify(error=f"bundle error: {exc}"), 400

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return jsonify(error=exc.description or exc.name), exc.code

    return app

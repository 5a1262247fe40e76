"""RL score fusion in the cloud (SPEC §2, seed 003): a trained actor picks ``a`` per page request.

**State** (what the cloud may know at a page request; no feedback beyond what the privacy settings allow):
the user's *behaviour sequence* — the last ``seq_len`` clicks and orders of the user's earlier sessions, as the
cloud received them in opt-in impression logs (:class:`BehaviourStore`; the device sends no feedback with a search
request, so a user who never opted in has an empty sequence) — and the *context*: the hour, the page index of this
request, and summary counts of the sequence. :func:`observe` builds it; the simulator's ``FusionEnv`` and the
server call the same function, so training and serving agree.

**Serving** (:class:`RLFusion`): the actor is an ONNX file run with onnxruntime (inputs ``seq`` [1, L, E] and
``ctx`` [1, C], output ``a`` [1]); its output is clipped to ``[1 - clip, 1 + clip]``. A kill switch (the file
``fusion.off`` next to the bundle or in the data directory, or ``EDGE_RERANK_FUSION_OFF=1``) and *any* fault
(unknown user shape, onnxruntime error, non-finite output) give ``a = 1``: the baseline fusion. Counters say how
often each happened.

A fusion *bundle* is a registry bundle (``cloud.registry``): ``manifest.json`` + ``actor.onnx`` +
``fusion.json`` (alpha, clip, observation sizes) + ``behaviour.npz`` (the store snapshot) + the device feature
config every bundle carries (unused here); a policy with ``FusionConfig.purpose_history`` also ``purpose.npz``
(the cloud's order-log snapshot, ``cloud.ranking.purpose_history``), whose features extend the context.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_rerank.cloud.ranking.fusion import fuse_heads, require_heads
from edge_rerank.cloud.ranking.purpose_history import PURPOSE_FEATURES, PURPOSE_FILE, OrderHistory
from edge_rerank.device_sdk.contracts import ImpressionRow, SearchRequest

MEAL_HOURS = frozenset({11, 12, 13, 17, 18, 19, 20})
CTX_FEATURES = ("hour_sin", "hour_cos", "meal", "page_index", "history_len", "history_clicks", "history_orders",
                "order_rate")
EVENT_EXTRA = ("is_click", "is_order", "price_level", "sessions_ago")
FUSION_CONFIG = "fusion.json"
BEHAVIOUR_FILE = "behaviour.npz"
ACTOR_FILE = "actor.onnx"
KILL_FILE = "fusion.off"
KILL_ENV = "EDGE_RERANK_FUSION_OFF"


@dataclass(frozen=True)
class FusionConfig:
    alpha: float = 1.0  # the global fusion hyper-parameter (a = 1)
    clip: float = 0.75  # actions live in [1 - clip, 1 + clip]
    seq_len: int = 16
    emb_dim: int = 16
    # the user's purpose history from the cloud's own order logs appended to the context (PURPOSE_FEATURES);
    # off: the observation is exactly the one before this option existed (old bundles lack the field)
    purpose_history: bool = False

    @property
    def event_dim(self) -> int:
        return self.emb_dim + len(EVENT_EXTRA)

    @property
    def ctx_features(self) -> tuple[str, ...]:
        return CTX_FEATURES + (PURPOSE_FEATURES if self.purpose_history else ())

    @property
    def ctx_dim(self) -> int:
        return len(self.ctx_features)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FusionConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class BehaviourStore:
    """The last ``seq_len`` click / order events per user from opt-in impression logs (earlier sessions), event =
    [id embedding row, is_click, is_order, price level / 4, sessions ago / 10]; plus per-user counts."""

    def __init__(self, cfg: FusionConfig, purpose: OrderHistory | None = None):
        self.cfg = cfg
        self.purpose = purpose  # the cloud's order-log history (observed when cfg.purpose_history)
        self._events: dict[str, deque] = {}
        self._counts: dict[str, np.ndarray] = {}  # sessions, clicks, orders

    def __len__(self) -> int:
        return len(self._counts)

    def add_session(self, rows: Iterable[ImpressionRow]) -> None:
        """One session's rows (its pages), after the session (the stream pipeline's delay)."""
        rows = list(rows)
        if not rows:
            return
        user = rows[0].user_id
        q = self._events.setdefault(user, deque(maxlen=self.cfg.seq_len))
        counts = self._counts.setdefault(user, np.zeros(3, dtype=np.float64))
        for ev in q:  # every stored event is one session older now
            ev[-1] = min(ev[-1] + 0.1, 1.0)
        counts[0] += 1
        clicked = sorted((c for r in rows for c in r.candidates if c.clicked),
                         key=lambda c: (c.click_step, c.shown_position))
        for c in clicked:
            emb = np.zeros(self.cfg.emb_dim, dtype=np.float32)
            if c.item.id_embedding is not None:
                v = np.asarray(c.item.id_embedding, dtype=np.float32).ravel()[: self.cfg.emb_dim]
                emb[: len(v)] = v
            q.append(np.concatenate([emb, [1.0, float(c.ordered), c.item.price_level / 4.0, 0.0]]).astype(np.float32))
            counts[1] += 1
            counts[2] += float(c.ordered)

    def add_rows(self, rows: Iterable[ImpressionRow]) -> None:
        """Rows of many sessions, in log order (grouped by session, sessions in the order they first appear)."""
        by_session: dict[str, list[ImpressionRow]] = {}
        for r in rows:
            by_session.setdefault(r.session_id, []).append(r)
        for session_rows in by_session.values():
            self.add_session(session_rows)

    def history(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(seq float32 [L, E], left-padded with zeros, most recent last; counts [3])."""
        L, E = self.cfg.seq_len, self.cfg.event_dim
        seq = np.zeros((L, E), dtype=np.float32)
        q = self._events.get(user_id)
        if q:
            seq[L - len(q):] = np.stack(list(q))
        return seq, self._counts.get(user_id, np.zeros(3))

    def save(self, path: str | Path) -> Path:
        users = sorted(self._counts)
        L, E = self.cfg.seq_len, self.cfg.event_dim
        seqs = np.stack([self.history(u)[0] for u in users]) if users else np.zeros((0, L, E), np.float32)
        counts = np.stack([self._counts[u] for u in users]) if users else np.zeros((0, 3))
        lens = np.array([len(self._events.get(u, ())) for u in users], dtype=np.int64)
        np.savez(path, users=np.asarray(users, dtype=str), seqs=seqs, counts=counts, lens=lens)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, cfg: FusionConfig) -> BehaviourStore:
        store = cls(cfg)
        with np.load(path) as z:
            users, seqs, counts, lens = [str(u) for u in z["users"]], z["seqs"], z["counts"], z["lens"]
        if seqs.ndim != 3 or seqs.shape[1:] != (cfg.seq_len, cfg.event_dim):
            raise ValueError(f"{path}: sequences are {seqs.shape[1:]}, the policy wants ({cfg.seq_len}, "
                             f"{cfg.event_dim})")
        for u, s, c, n in zip(users, seqs, counts, lens, strict=True):
            store._events[u] = deque((row.copy() for row in s[cfg.seq_len - int(n):]), maxlen=cfg.seq_len)
            store._counts[u] = np.asarray(c, dtype=np.float64)
        return store


def observe(req: SearchRequest, store: BehaviourStore) -> dict[str, np.ndarray]:
    """The state at a page request: {"seq": float32 [L, E], "ctx": float32 [C]} (``store.cfg.ctx_features``
    order: CTX_FEATURES, then PURPOSE_FEATURES from the store's order history when ``cfg.purpose_history``)."""
    seq, counts = store.history(req.user_id)
    L = store.cfg.seq_len
    n = float(np.count_nonzero(seq[:, -4]))  # events present (is_click is 1 for every stored event)
    h = 2 * np.pi * req.context.hour / 24.0
    ctx = np.array([np.sin(h), np.cos(h), float(req.context.hour in MEAL_HOURS), min(req.page_index, 4) / 2.0,
                    n / L, min(counts[1], 50.0) / 10.0, min(counts[2], 20.0) / 5.0,
                    counts[2] / max(counts[1], 1.0)], dtype=np.float32)
    if store.cfg.purpose_history:
        if store.purpose is None:
            raise ValueError("this fusion policy observes the purpose history (FusionConfig.purpose_history) but "
                             "the behaviour store has no order history attached")
        ctx = np.concatenate([ctx, store.purpose.features(req.user_id)])
    return {"seq": seq, "ctx": ctx}


def load_store(bundle_dir: str | Path, cfg: FusionConfig) -> BehaviourStore:
    """A bundle's behaviour store, with its order history attached when the policy observes it."""
    root = Path(bundle_dir)
    store = BehaviourStore.load(root / BEHAVIOUR_FILE, cfg)
    if cfg.purpose_history:
        if not (root / PURPOSE_FILE).is_file():
            raise ValueError(f"{root}: the policy observes the purpose history but the bundle has no {PURPOSE_FILE}")
        store.purpose = OrderHistory.load(root / PURPOSE_FILE)
    return store


@dataclass
class FusionStats:
    requests: int = 0
    killed: int = 0
    fallbacks: Counter = None  # type: ignore[assignment]
    actions_sum: float = 0.0

    def __post_init__(self) -> None:
        if self.fallbacks is None:
            self.fallbacks = Counter()


class RLFusion:
    """Per-page-request fusion: ``a = actor(observe(req))`` clipped around 1, ``a = 1`` when killed or on any fault.
    ``per_page = True`` tells the search pipeline to build rankings page by page (cloud.ranking.fusion)."""

    per_page = True

    def __init__(self, actor_path: str | Path, cfg: FusionConfig, store: BehaviourStore, *,
                 kill_files: tuple[Path, ...] = (), version: str = "", keep_latencies: int = 100_000):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the [cloud] extra installs it
            raise RuntimeError("RL fusion needs onnxruntime: pip install 'edge-rerank[cloud]'") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(str(actor_path), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in self._sess.get_inputs()}
        if names != {"seq", "ctx"}:
            raise ValueError(f"{actor_path}: the actor must take inputs seq and ctx, got {sorted(names)}")
        self.cfg, self.store, self.version = cfg, store, version
        self.kill_files = tuple(Path(p) for p in kill_files)
        self.stats = FusionStats()
        self.latencies_ms: deque[float] = deque(maxlen=keep_latencies)
        self._lock = threading.Lock()
        self.action(SearchRequest("warmup", "warmup", "warmup-user", "warmup"))  # load + first run before traffic
        self.stats = FusionStats()
        self.latencies_ms.clear()

    def killed(self) -> bool:
        return os.environ.get(KILL_ENV, "") == "1" or any(p.exists() for p in self.kill_files)

    def _fallback(self, reason: str) -> float:
        with self._lock:
            self.stats.fallbacks[reason] += 1
        return 1.0

    def action(self, req: SearchRequest) -> float:
        """The adjustment `a` for this page request (1.0 = baseline)."""
        with self._lock:
            self.stats.requests += 1
        if self.killed():
            with self._lock:
                self.stats.killed += 1
            return 1.0
        t0 = time.perf_counter()
        try:
            obs = observe(req, self.store)
            out = self._sess.run(["a"], {"seq": obs["seq"][None], "ctx": obs["ctx"][None]})[0]
            a = float(np.asarray(out, dtype=np.float64).reshape(-1)[0])
        except Exception as exc:  # any fault in state building or inference: the baseline fusion
            return self._fallback(type(exc).__name__)
        if not np.isfinite(a):
            return self._fallback("non_finite")
        a = float(np.clip(a, 1.0 - self.cfg.clip, 1.0 + self.cfg.clip))
        with self._lock:
            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            self.stats.actions_sum += a
        return a

    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        return self.fuse_with(heads, self.action(req))

    def fuse_with(self, heads: dict[str, np.ndarray], a: float) -> np.ndarray:
        click, order = require_heads(heads)
        return fuse_heads(click, order, self.cfg.alpha, a)


def load_fusion_bundle(bundle_dir: str | Path, *, kill_files: tuple[Path, ...] = ()) -> RLFusion:
    """An :class:`RLFusion` from a verified fusion bundle (sha256 of every file checked first)."""
    from edge_rerank.device_sdk.bundle import read_bundle

    root = Path(bundle_dir)
    bundle = read_bundle(root)
    m = bundle.manifest
    for rel in (FUSION_CONFIG, BEHAVIOUR_FILE):
        if rel not in m.files:
            raise ValueError(f"{root}: not a fusion bundle (no {rel} in the manifest)")
    cfg = FusionConfig.from_dict(json.loads((root / FUSION_CONFIG).read_text()))
    if cfg.purpose_history and PURPOSE_FILE not in m.files:
        raise ValueError(f"{root}: the policy observes the purpose history but {PURPOSE_FILE} is not in the manifest")
    store = load_store(root, cfg)
    return RLFusion(root / m.model_file, cfg, store, kill_files=(root / KILL_FILE, *kill_files),
                    version=f"{m.name}@{m.version}")


def load_fusion(data_dir: str | Path, registry=None, name: str = "fusion-policy"):
    """The fusion policy a server uses: the promoted (stable) version of `name` in the registry if there is one,
    else a bundle in ``<data_dir>/fusion``, else None (the pipeline keeps ``SingleHead``). ``<data_dir>/fusion.off``
    is a kill switch for either."""
    kill = (Path(data_dir) / KILL_FILE,)
    if registry is not None and name in registry.names():
        stable = registry.state(name).stable
        if stable is not None:
            return load_fusion_bundle(registry._version_dir(name, stable), kill_files=kill)
    local = Path(data_dir) / "fusion"
    if (local / "manifest.json").is_file():
        return load_fusion_bundle(local, kill_files=kill)
    return None

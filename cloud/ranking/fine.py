"""The fine ranker: scores recalled items and exposes its last hidden layer (sent to the device).

Two implementations behind one protocol (:class:`Ranker`): both build the same cloud features with
:func:`cloud_features` and run ``forward(x) -> (score [N], hidden [N, D])``.

- :class:`FineRanker` — a fixed-weight two-layer network in numpy (``ranker.npz``): the score is a linear
  read-out of the features and the hidden layer a seeded tanh projection. It knows what the cloud knows
  (quality, popularity, long-term preference, distance, price fit) and nothing of the in-session intent.
- :class:`OnnxFineRanker` — the trained cloud ranker (``ranker.onnx``, exported by ``cloud/training``) run
  with onnxruntime. Export contract: input ``features`` float32 [N, F] (dynamic N, F = ``len(FEATURES)``),
  outputs ``score`` float32 [N] and ``hidden`` float32 [N, D].

:func:`load_ranker` picks ``ranker.onnx`` from the cloud data directory when present, else ``ranker.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

FEATURES = ("quality", "log_popularity", "pref_affinity", "log_distance", "price_gap", "bias")
ONNX_INPUT = "features"
ONNX_OUTPUTS = ("score", "hidden")
HEAD_OUTPUTS = ("click", "order")  # optional extra outputs (logits) of a two-head ranker (cloud.ranking.fusion)


class RankerError(RuntimeError):
    """The ranker file is missing, malformed, or does not follow the export contract."""


def cloud_features(*, quality: np.ndarray, popularity: np.ndarray, item_emb: np.ndarray, user_pref: np.ndarray,
                   distance_km: np.ndarray, price_level: np.ndarray, price_pref: float) -> np.ndarray:
    """The cloud ranker's input: float32 [N, len(FEATURES)], columns in FEATURES order."""
    return fill_cloud_features(cloud_feature_base(quality, popularity), item_emb=item_emb, user_pref=user_pref,
                               distance_km=distance_km, price_level=price_level, price_pref=price_pref)


def cloud_feature_base(quality: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """float32 [N, len(FEATURES)] with the columns of the item alone filled (quality, log popularity, bias): the
    search pipeline keeps one per recall set and fills the rest per search with :func:`fill_cloud_features`."""
    base = np.zeros((len(quality), len(FEATURES)), dtype=np.float32)
    base[:, 0], base[:, 1], base[:, 5] = quality, np.log1p(popularity), 1.0
    return base


def fill_cloud_features(base: np.ndarray, *, item_emb: np.ndarray, user_pref: np.ndarray, distance_km: np.ndarray,
                        price_level: np.ndarray, price_pref: float, inplace: bool = False) -> np.ndarray:
    """A copy of `base` (:func:`cloud_feature_base`) with the columns of the search filled (affinity to the user's
    preference, log distance, price gap). Each column is rounded to float32 once, from the dtype it is computed in.
    ``inplace``: fill `base` itself (a caller's fresh array, e.g. rows gathered from a larger base)."""
    x = base if inplace else base.copy()
    x[:, 2] = item_emb @ user_pref
    x[:, 3] = np.log1p(distance_km)
    x[:, 4] = np.abs(price_level - price_pref)
    return x


@runtime_checkable
class Ranker(Protocol):
    """What the search pipeline needs from a fine ranker."""

    @property
    def dense_dim(self) -> int: ...

    def features(self, *, quality: np.ndarray, popularity: np.ndarray, item_emb: np.ndarray, user_pref: np.ndarray,
                 distance_km: np.ndarray, price_level: np.ndarray, price_pref: float) -> np.ndarray: ...

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score float32 [N], hidden float32 [N, dense_dim]) for features x float32 [N, F]."""
        ...


def default_ranker_weights(dense_dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = len(FEATURES)
    return {
        "w1": (rng.standard_normal((dense_dim, f)) / np.sqrt(f)).astype(np.float32),
        "b1": (0.1 * rng.standard_normal(dense_dim)).astype(np.float32),
        # readout on the raw features: higher quality/popularity/affinity, closer, better price fit
        "w_score": np.array([1.2, 0.25, 1.0, -0.6, -0.35, 0.0], dtype=np.float32),
    }


@dataclass
class FineRanker:
    w1: np.ndarray
    b1: np.ndarray
    w_score: np.ndarray
    kind: str = "npz"
    standard_features = True  # features() is cloud_features: the pipeline may fill a per-recall-set base instead

    @classmethod
    def from_weights(cls, w: dict[str, np.ndarray]) -> FineRanker:
        return cls(w1=np.asarray(w["w1"], np.float32), b1=np.asarray(w["b1"], np.float32),
                   w_score=np.asarray(w["w_score"], np.float32))

    @property
    def dense_dim(self) -> int:
        return int(self.w1.shape[0])

    def features(self, **kw) -> np.ndarray:
        return cloud_features(**kw)

    def score(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w_score

    def hidden(self, x: np.ndarray) -> np.ndarray:
        h = x @ self.w1.T
        if h.dtype != np.float32:  # float64 features: the plain expression (its rounding)
            return np.tanh(h + self.b1).astype(np.float32)
        h += self.b1  # in place: the same operations as tanh(x @ w1.T + b1), no temporaries
        return np.tanh(h, out=h)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.score(x).astype(np.float32), self.hidden(x)


class OnnxFineRanker:
    """The trained cloud ranker, run with onnxruntime (single intra-op thread per gunicorn worker)."""

    kind = "onnx"
    standard_features = True  # features() is cloud_features

    def __init__(self, path: str | Path, *, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the [cloud] extra installs it
            raise RankerError("ranker.onnx needs onnxruntime: pip install 'edge-rerank[cloud]'") from exc
        self.path = Path(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise RankerError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        inputs = {i.name: i for i in self._sess.get_inputs()}
        outputs = {o.name: o for o in self._sess.get_outputs()}
        if set(inputs) != {ONNX_INPUT} or not set(ONNX_OUTPUTS) <= set(outputs):
            raise RankerError(f"{self.path}: want input {ONNX_INPUT!r} and outputs {ONNX_OUTPUTS}, "
                              f"got inputs {sorted(inputs)} outputs {sorted(outputs)}")
        shape = inputs[ONNX_INPUT].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(FEATURES)):
            raise RankerError(f"{self.path}: input {ONNX_INPUT!r} must be [N, {len(FEATURES)}], got {shape}")
        probe_score, probe_hidden = self._run(np.zeros((2, len(FEATURES)), dtype=np.float32))
        if probe_score.shape != (2,) or probe_hidden.ndim != 2 or probe_hidden.shape[0] != 2:
            raise RankerError(f"{self.path}: outputs must be score [N] and hidden [N, D], got "
                              f"{probe_score.shape} and {probe_hidden.shape}")
        self._dense_dim = int(probe_hidden.shape[1])
        self.head_names = tuple(h for h in HEAD_OUTPUTS if h in outputs)  # a two-head ranker's click/order logits

    @property
    def dense_dim(self) -> int:
        return self._dense_dim

    def features(self, **kw) -> np.ndarray:
        return cloud_features(**kw)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, hidden = self._sess.run(list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(x, np.float32)})
        return np.asarray(score, np.float32).reshape(-1), np.asarray(hidden, np.float32)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.shape[0] == 0:
            return np.zeros(0, np.float32), np.zeros((0, self._dense_dim), np.float32)
        return self._run(x)

    def forward_heads(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({"score": [N], and "click"/"order" logits [N] when the model has them}, hidden [N, D])."""
        if x.shape[0] == 0 or not self.head_names:
            score, hidden = self.forward(x)
            return {"score": score, **{h: np.zeros(0, np.float32) for h in self.head_names}}, hidden
        names = [*ONNX_OUTPUTS, *self.head_names]
        outs = self._sess.run(names, {ONNX_INPUT: np.ascontiguousarray(x, np.float32)})
        heads = {n: np.asarray(o, np.float32).reshape(-1) for n, o in zip(names, outs, strict=True) if n != "hidden"}
        return heads, np.asarray(outs[1], np.float32)


def load_ranker(data_dir: str | Path) -> Ranker:
    """``ranker.onnx`` (trained, onnxruntime) when present in the cloud data directory, else ``ranker.npz``."""
    root = Path(data_dir)
    if (root / "ranker.onnx").is_file():
        return OnnxFineRanker(root / "ranker.onnx")
    if not (root / "ranker.npz").is_file():
        raise RankerError(f"{root}: neither ranker.onnx nor ranker.npz")
    with np.load(root / "ranker.npz") as z:
        return FineRanker.from_weights(dict(z))

"""The fine ranker: scores recalled items and exposes its last hidden layer (sent to the device).

Today this is a fixed-weight two-layer network over hand-built cloud features: the score is a linear
read-out of the features and the hidden layer is a seeded tanh projection of them. It knows what the cloud
knows (quality, popularity, long-term preference, distance, price fit) and nothing of the in-session intent.
The trained cloud ranker (joint training, #4) replaces these weights with learned ones in the same file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("quality", "log_popularity", "pref_affinity", "log_distance", "price_gap", "bias")


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

    @classmethod
    def from_weights(cls, w: dict[str, np.ndarray]) -> FineRanker:
        return cls(w1=np.asarray(w["w1"], np.float32), b1=np.asarray(w["b1"], np.float32),
                   w_score=np.asarray(w["w_score"], np.float32))

    @property
    def dense_dim(self) -> int:
        return int(self.w1.shape[0])

    def features(self, *, quality: np.ndarray, popularity: np.ndarray, item_emb: np.ndarray, user_pref: np.ndarray,
                 distance_km: np.ndarray, price_level: np.ndarray, price_pref: float) -> np.ndarray:
        affinity = item_emb @ user_pref
        return np.stack([quality, np.log1p(popularity), affinity, np.log1p(distance_km),
                         np.abs(price_level - price_pref), np.ones_like(quality)], axis=1).astype(np.float32)

    def score(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w_score

    def hidden(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.w1.T + self.b1).astype(np.float32)

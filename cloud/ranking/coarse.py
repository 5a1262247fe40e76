"""The coarse-ranking seam (recall -> **coarse** -> fine). A later issue fills it with the two-tower model
(query tower online, item vectors precomputed); today the pass-through keeps every recalled item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_rerank.device_sdk.contracts import SearchRequest


@runtime_checkable
class CoarseRanker(Protocol):
    def select(self, req: SearchRequest, candidates: np.ndarray) -> np.ndarray:
        """Catalog rows (a subset of `candidates`, any order) that go on to the fine ranker."""
        ...


@dataclass(frozen=True)
class PassThroughCoarse:
    """No coarse stage: every recalled item goes to the fine ranker."""

    def select(self, req: SearchRequest, candidates: np.ndarray) -> np.ndarray:
        return candidates

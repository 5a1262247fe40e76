"""The score-fusion seam (fine ranker heads -> one ranking score). The RL fusion policy (a later issue)
adjusts the click/order fusion weight per request from the user's state; today the single score head is
used as is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_rerank.device_sdk.contracts import SearchRequest


@runtime_checkable
class FusionPolicy(Protocol):
    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        """One float32 score per candidate from the ranker's heads (``{"score": [N], ...}``)."""
        ...


@dataclass(frozen=True)
class SingleHead:
    """Rank by one head as it is (``score`` by default)."""

    head: str = "score"

    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        return heads[self.head]

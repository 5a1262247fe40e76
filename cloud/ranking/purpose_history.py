"""The user's purpose history from the cloud's own order logs (issue 17: a first-page purpose signal).

The platform records every order it takes (the order service is the cloud's: no device feedback, no opt-in
impression log needed) and every search session it served (the session ids and page indexes of its search
requests). From those two logs the cloud knows, per user, how many earlier sessions they had, in how many of them
they ordered, and how many pages they requested in the sessions without an order: a user who ordered in most of
their sessions is likely ordering again. That is context the fine ranker's world may use at a user's *first* page
request, when nothing of the session itself is known yet.

:class:`OrderHistory` holds one record per *finished* session (orders, page requests), in the order the sessions
ended; a session is added only after it ended (``add_session``), so a page request never sees its own session. The
features
(:data:`PURPOSE_FEATURES`, appended to the fusion observation's context when ``FusionConfig.purpose_history``):

- ``purpose_sessions``: earlier sessions, min(n, 20) / 10;
- ``purpose_order_share``: share of earlier sessions with an order, shrunk to the prior 0.3 with weight 2
  ((k + 0.6) / (n + 2): a new user sits at the prior);
- ``purpose_orders_per_session``: orders / max(n, 1), capped at 2;
- ``purpose_recency``: sessions since the last one with an order, / 10, capped at 1 (1: never ordered);
- ``purpose_last_ordered``: 1 if the user's last session had an order;
- ``purpose_pages_unconverted``: mean page requests of the earlier sessions without an order, / 5, capped at 2
  (0: none).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

PURPOSE_FEATURES = ("purpose_sessions", "purpose_order_share", "purpose_orders_per_session", "purpose_recency",
                    "purpose_last_ordered", "purpose_pages_unconverted")
PURPOSE_FILE = "purpose.npz"
_PRIOR, _PRIOR_WEIGHT = 0.3, 2.0


class OrderHistory:
    """Per user, (orders, page requests) of each finished session, oldest first (the cloud's order + search logs)."""

    def __init__(self) -> None:
        self._sessions: dict[str, list[int]] = {}
        self._pages: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def add_session(self, user_id: str, orders: int, pages: int = 1) -> None:
        """A session that has ended: its user, how many orders the order service took in it and how many pages
        the search service served it."""
        if orders < 0 or pages < 0:
            raise ValueError(f"orders and pages must be >= 0, got {orders}, {pages}")
        self._sessions.setdefault(str(user_id), []).append(int(orders))
        self._pages.setdefault(str(user_id), []).append(int(pages))

    def add_sessions(self, sessions: Iterable[tuple[str, int] | tuple[str, int, int]]) -> None:
        for rec in sessions:
            self.add_session(*rec)

    def sessions_of(self, user_id: str) -> list[int]:
        """The orders of each of the user's finished sessions, oldest first."""
        return list(self._sessions.get(str(user_id), ()))

    def pages_of(self, user_id: str) -> list[int]:
        return list(self._pages.get(str(user_id), ()))

    def features(self, user_id: str) -> np.ndarray:
        """float32 [len(PURPOSE_FEATURES)] from the user's finished sessions (a new user: no sessions)."""
        s, pages = self._sessions.get(str(user_id), ()), self._pages.get(str(user_id), ())
        n = len(s)
        with_order = [i for i, k in enumerate(s) if k > 0]
        since = (n - 1 - with_order[-1]) if with_order else None
        dry = [p for k, p in zip(s, pages, strict=True) if k == 0]
        return np.array([min(n, 20) / 10.0, (len(with_order) + _PRIOR * _PRIOR_WEIGHT) / (n + _PRIOR_WEIGHT),
                         min(sum(s) / max(n, 1), 2.0), 1.0 if since is None else min(since / 10.0, 1.0),
                         float(n > 0 and s[-1] > 0), min(float(np.mean(dry)) / 5.0, 2.0) if dry else 0.0],
                        dtype=np.float32)

    def save(self, path: str | Path) -> Path:
        users = sorted(self._sessions)
        lens = np.array([len(self._sessions[u]) for u in users], dtype=np.int64)
        flat = np.array([k for u in users for k in self._sessions[u]], dtype=np.int64)
        pages = np.array([p for u in users for p in self._pages[u]], dtype=np.int64)
        np.savez(path, users=np.asarray(users, dtype=str), lens=lens, orders=flat, pages=pages)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> OrderHistory:
        h = cls()
        with np.load(path) as z:
            users, lens, flat, pages = [str(u) for u in z["users"]], z["lens"], z["orders"], z["pages"]
        if not int(lens.sum()) == len(flat) == len(pages):
            raise ValueError(f"{path}: {int(lens.sum())} sessions listed, {len(flat)} / {len(pages)} stored")
        start = 0
        for u, n in zip(users, lens, strict=True):
            h._sessions[u] = [int(k) for k in flat[start:start + int(n)]]
            h._pages[u] = [int(p) for p in pages[start:start + int(n)]]
            start += int(n)
        return h

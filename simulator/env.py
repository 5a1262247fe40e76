"""Gymnasium ``PhoneSessionEnv``: one search session per episode, one screen per step.

At each step the agent sees the next ``window`` unseen results (cloud attributes + how they relate to the
session's feedback so far) and a few session features, and answers with one score per result; the phone
reorders those unseen results by the scores (stable: all-equal scores keep the cloud order, positions
already revealed never move) and the user then reveals and acts on the next screen.

Reward per step (SPEC §2's shape): ``clicks + order_weight * orders - leave_penalty`` on the screen where the
user leaves. An episode ends when the user leaves or the results run out. Deterministic for a seed: the
session drawn, the user's luck and the network are all functions of the seed (``gymnasium.utils.env_checker``
checks it).

Needs the ``[sim]`` extra (gymnasium).
"""

from __future__ import annotations

import numpy as np

from edge_rerank.device_sdk.contracts import EventKind
from edge_rerank.device_sdk.features.operators import pair_terms
from edge_rerank.simulator.phone import Phone, PhoneConfig, PhoneSession
from edge_rerank.simulator.transport import CloudTransport
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("simulator.env needs gymnasium: pip install 'edge-rerank[sim]'") from exc

CANDIDATE_FEATURES = ("present", "cloud_score", "cloud_position", "brand_clicks", "category_clicks",
                      "brand_long_skips", "dist_context", "dist_last_click", "price_level", "sim_last_click")
SESSION_FEATURES = ("screen", "clicks", "orders", "long_skips", "minutes", "frustrated")
_BOUND = 10.0


class PhoneSessionEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, world: World, cloud: CloudTransport, *, user_model: UserModel | None = None,
                 window: int = 8, session_seed: int = 0, phone_config: PhoneConfig | None = None,
                 order_weight: float = 1.0, leave_penalty: float = 0.5):
        super().__init__()
        self.world, self.window, self.session_seed = world, window, session_seed
        self.um = user_model or UserModel(world)
        # the agent's observation reads the session's feedback events: the phone keeps them
        self.phone = Phone(self.um, cloud, arm="agent", keep_logs=False, config=phone_config, keep_events=True)
        self.order_weight, self.leave_penalty = order_weight, leave_penalty
        n_obs = window * len(CANDIDATE_FEATURES) + len(SESSION_FEATURES)
        self.observation_space = spaces.Box(-_BOUND, _BOUND, shape=(n_obs,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(window,), dtype=np.float32)
        self.session: PhoneSession | None = None

    # ---- observation ----
    def _observe(self) -> np.ndarray:
        s = self.session
        assert s is not None
        cand = np.zeros((self.window, len(CANDIDATE_FEATURES)), dtype=np.float64)
        ds = s.device_session
        events = ds.events()
        clicked = [e for e in events if e.kind == EventKind.CLICK]
        clicked_ids = {e.item_id for e in clicked}
        long_skips = [e for e in events if e.kind == EventKind.EXPOSURE and e.item_id not in clicked_ids
                      and e.dwell_ms >= ds.features.dwell_threshold_ms]
        if not s.done:
            ctx = s.spec.context
            window = s.display[s.shown_upto: s.shown_upto + self.window]
            n = len(window)
            if n:
                zero = np.zeros(n)
                clicks = pair_terms(window, clicked, ds.features) if clicked else None
                skips = pair_terms(window, long_skips, ds.features) if long_skips else None
                cand[:n] = np.stack([
                    np.ones(n), [it.cloud_score for it in window],
                    [it.cloud_position / ds.features.n_max for it in window],
                    clicks.match["brand"].sum(axis=1) if clicks else zero,
                    clicks.match["category"].sum(axis=1) if clicks else zero,
                    skips.match["brand"].sum(axis=1) if skips else zero,
                    [np.hypot(it.lat - ctx.lat, it.lon - ctx.lon) / 10.0 for it in window],
                    clicks.km[:, -1] / 10.0 if clicks else zero,
                    [it.price_level / 4.0 for it in window],
                    clicks.cosine[:, -1] if clicks else zero], axis=1)
        o = s.out
        sess = np.array([s.screen / 20.0, o.clicks / 5.0, o.orders / 2.0, len(long_skips) / 20.0, s.t / 60000.0,
                         s.user.frustrated / 5.0])
        obs = np.concatenate([cand.ravel(), sess])
        return np.clip(obs, -_BOUND, _BOUND).astype(np.float32)

    def _info(self) -> dict:
        s = self.session
        assert s is not None
        return {"session_id": s.spec.session_id, "screen": s.screen, "clicks": s.out.clicks, "orders": s.out.orders,
                "predecided": s.spec.predecided}

    # ---- gymnasium API ----
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = int(options["session_index"]) if options and "session_index" in options else int(
            self.np_random.integers(0, 2**31 - 1))
        self.session = self.phone.session(self.world.session(index, self.session_seed))
        return self._observe(), self._info()

    def step(self, action):
        s = self.session
        if s is None or s.done:
            raise RuntimeError("call reset() before step() (the episode is over)")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.window,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {self.window} finite scores, got shape {a.shape}")
        n_unseen = min(self.window, len(s.display) - s.shown_upto)
        if n_unseen >= 2:
            s.apply_scores(a[:n_unseen])
        r = s.play_screen()
        reward = r["clicks"] + self.order_weight * r["orders"] - (self.leave_penalty if r["left"] else 0.0)
        return self._observe(), float(reward), bool(s.done), False, self._info()

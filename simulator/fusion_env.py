"""Gymnasium ``FusionEnv``: the page-level MDP of RL score fusion (SPEC §2, seed 003).

One episode = one search session in the order-aware world (``simulator.order_world``); one step = one page
request. The observation is what the cloud knows at that request (``cloud.ranking.rl_fusion.observe``: the
user's behaviour sequence from earlier sessions' opt-in logs + context); the action ``u`` in [-1, 1] sets the
fusion adjustment ``a = 1 + clip · u`` for that page (u = 0: the baseline). The cloud builds the page with it
(``SearchPipeline`` with a per-page fusion, exactly the serving path) and the user plays screens until the phone
requests the next page or leaves. Reward of a step = ``clicks + order_weight · orders`` in that span, minus
``no_conversion_penalty`` when the span had neither, minus ``leave_penalty`` when the user left in it without a
conversion (without the penalties an agent can learn to make users scroll more).

The phone runs in a worker thread that pauses at every page request until ``step`` hands it the action: the
simulator's code stays as it is (its page request is a plain function call). Deterministic for a seed (the session
drawn, the user's luck and the network are functions of it); ``gymnasium.utils.env_checker.check_env`` passes.
Needs the ``[sim]`` extra (gymnasium).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_rerank.cloud.catalog import load_catalog
from edge_rerank.cloud.embedding_store import FileEmbeddingStore
from edge_rerank.cloud.ranking.fine import load_ranker
from edge_rerank.cloud.ranking.fusion import fuse_heads, require_heads
from edge_rerank.cloud.ranking.pipeline import SearchPipeline
from edge_rerank.cloud.ranking.rl_fusion import BehaviourStore, FusionConfig, observe
from edge_rerank.device_sdk.contracts import SearchPage, SearchRequest
from edge_rerank.simulator.phone import Phone, PhoneConfig
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("simulator.fusion_env needs gymnasium: pip install 'edge-rerank[sim]'") from exc

_BOUND = 10.0


@dataclass(frozen=True)
class RewardConfig:
    order_weight: float = 1.0
    no_conversion_penalty: float = 0.3  # a page request span without a click or an order
    leave_penalty: float = 0.5  # the span in which the user left, without a conversion

    def reward(self, clicks: int, orders: int, left: bool) -> float:
        r = clicks + self.order_weight * orders
        if clicks + orders == 0:
            r -= self.no_conversion_penalty + (self.leave_penalty if left else 0.0)
        return float(r)


class FusionCloud:
    """The cloud's search pipeline in-process with a given fusion policy and the fp16 row rounding of the wire
    (as ``InProcessCloud(wire=False)``). ``cache_size=0``: every page is ranked when asked for."""

    def __init__(self, data_dir: str | Path, fusion, *, cache_size: int = 0):
        self.pipeline = SearchPipeline(load_catalog(data_dir), FileEmbeddingStore(f"{data_dir}/embeddings"),
                                       load_ranker(data_dir), fusion=fusion, cache_size=cache_size)
        self.logged: list = []

    def search(self, req: SearchRequest) -> SearchPage:
        page = self.pipeline.search(req)
        if page.items:
            rows = np.stack([it.id_embedding for it in page.items]).astype("<f2").astype(np.float32)
            for it, row in zip(page.items, rows, strict=True):
                it.id_embedding = row
        return page

    def post_logs(self, rows: list) -> int:
        self.logged.extend(rows)
        return len(rows)


class _Aborted(Exception):
    pass


class _AgentFusion:
    """The pipeline's per-page fusion inside the env: a page's action comes from the agent (asked once per page
    request; earlier pages of the session reuse their recorded actions)."""

    per_page = True

    def __init__(self, env: FusionEnv):
        self.env = env

    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        click, order = require_heads(heads)
        return fuse_heads(click, order, self.env.fusion_cfg.alpha, self.env._action_for(req))


class FusionEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, world: World, data_dir: str | Path, user_model: UserModel, store: BehaviourStore, *,
                 fusion_cfg: FusionConfig, reward: RewardConfig | None = None, session_seed: int = 0,
                 phone_config: PhoneConfig | None = None):
        super().__init__()
        self.world, self.um, self.store = world, user_model, store
        self.fusion_cfg, self.reward_cfg = fusion_cfg, reward or RewardConfig()
        self.session_seed = session_seed
        self._init = (world, data_dir, user_model, store, fusion_cfg, self.reward_cfg, session_seed, phone_config)
        self.cloud = FusionCloud(data_dir, _AgentFusion(self))
        self.phone = Phone(user_model, self.cloud, arm="fusion-agent", keep_logs=False, config=phone_config)
        L, E, C = fusion_cfg.seq_len, fusion_cfg.event_dim, fusion_cfg.ctx_dim
        self.observation_space = spaces.Dict({
            "seq": spaces.Box(-_BOUND, _BOUND, shape=(L, E), dtype=np.float32),
            "ctx": spaces.Box(-_BOUND, _BOUND, shape=(C,), dtype=np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._thread: threading.Thread | None = None
        self._to_env: queue.Queue = queue.Queue()
        self._to_phone: queue.Queue = queue.Queue()
        self._actions: dict[tuple[str, int], float] = {}
        self._acc = [0, 0]  # clicks, orders since the last page request
        self._session = None
        self.last_actions: list[float] = []  # the episode's a per page (for reports)

    # ---- the phone's side (worker thread) ----
    def _action_for(self, req: SearchRequest) -> float:
        key = (req.session_id, req.page_index)
        if key not in self._actions:
            obs = self._obs(req)
            clicks, orders = self._acc
            self._acc = [0, 0]
            self._to_env.put(("request", obs, clicks, orders))
            msg = self._to_phone.get()
            if msg is _Aborted:
                raise _Aborted()
            self._actions[key] = float(msg)
        return self._actions[key]

    def _run_phone(self, spec) -> None:
        try:
            s = self.phone.session(spec)  # requests page 0 (asks the agent)
            self._session = s
            while not s.done:
                r = s.play_screen()
                self._acc[0] += r["clicks"]
                self._acc[1] += r["orders"]
            clicks, orders = self._acc
            self._to_env.put(("end", None, clicks, orders, bool(not s.out.exhausted)))
        except _Aborted:
            return
        except BaseException as exc:  # surfaced in the caller's thread
            self._to_env.put(("error", exc))

    def _obs(self, req: SearchRequest) -> dict[str, np.ndarray]:
        o = observe(req, self.store)
        return {k: np.clip(v, -_BOUND, _BOUND).astype(np.float32) for k, v in o.items()}

    def _zero_obs(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(sp.shape, dtype=np.float32) for k, sp in self.observation_space.spaces.items()}

    def _abort(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._to_phone.put(_Aborted)
            self._thread.join()
        self._thread = None

    def _receive(self):
        msg = self._to_env.get()
        if msg[0] == "error":
            self._thread = None
            raise msg[1]
        return msg

    # ---- gymnasium API ----
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._abort()
        index = int(options["session_index"]) if options and "session_index" in options else int(
            self.np_random.integers(0, 2**31 - 1))
        spec = self.world.session(index, self.session_seed)
        if options and options.get("luck_seed") is not None:  # the same session with other luck (paired checks)
            spec = replace(spec, seed=int(options["luck_seed"]))
        self._to_env, self._to_phone = queue.Queue(), queue.Queue()
        self._actions, self._acc, self.last_actions = {}, [0, 0], []
        self._thread = threading.Thread(target=self._run_phone, args=(spec,), daemon=True)
        self._thread.start()
        msg = self._receive()
        if msg[0] != "request":  # pragma: no cover - a session always requests its first page
            raise RuntimeError("the session ended before its first page request")
        return msg[1], {"session_id": spec.session_id, "page_index": 0, "session_index": index}

    def step(self, action):
        if self._thread is None:
            raise RuntimeError("call reset() before step() (the episode is over)")
        u = np.asarray(action, dtype=np.float64).reshape(-1)
        if u.shape != (1,) or not np.isfinite(u[0]):
            raise ValueError(f"action must be one finite number in [-1, 1], got {action!r}")
        a = 1.0 + self.fusion_cfg.clip * float(np.clip(u[0], -1.0, 1.0))
        self.last_actions.append(a)
        self._to_phone.put(a)
        msg = self._receive()
        if msg[0] == "request":
            _, obs, clicks, orders = msg
            return obs, self.reward_cfg.reward(clicks, orders, False), False, False, {
                "clicks": clicks, "orders": orders, "a": a}
        _, _, clicks, orders, left = msg
        self._thread.join()
        self._thread = None
        out = self._session.out if self._session is not None else None
        info = {"clicks": clicks, "orders": orders, "a": a, "left": left,
                "screens": out.screens if out else 0, "pages": out.pages if out else 0}
        return self._zero_obs(), self.reward_cfg.reward(clicks, orders, left), True, False, info

    def close(self) -> None:
        self._abort()

    def branch(self) -> FusionEnv:
        """Another env on the same world, cloud data, store, reward and session seed (its own pipeline and phone):
        what :class:`PairedRollouts` replays sessions in, so the caller's episode is not disturbed."""
        world, data_dir, um, store, fcfg, reward, session_seed, phone_config = self._init
        return FusionEnv(world, data_dir, um, store, fusion_cfg=fcfg, reward=reward, session_seed=session_seed,
                         phone_config=phone_config)

    def paired_rollouts(self, *, gamma: float = 0.9, horizon: int = 0) -> PairedRollouts:
        """Common-random-number paired continuations of this env's sessions (:class:`PairedRollouts`)."""
        return PairedRollouts(self, gamma=gamma, horizon=horizon)


def play(env: FusionEnv, index: int, actions: Sequence[float], *, then: float = 0.0, luck_seed: int | None = None,
         max_steps: int = 0) -> list[dict]:
    """Replay session `index` of the env's session seed with `actions` (u) on its first pages and `then` after them;
    returns per page request ``{"clicks", "orders", "left", "u"}`` (``left``: the user left in that span — only
    the last). ``max_steps`` > 0 stops after that many pages (a horizon; ``left`` then stays False). ``luck_seed``
    replaces the session's seed, i.e. the same user, query, context and history with other luck (every draw of
    the phone and the user is keyed by it). Every draw is a pure function of the session's seed and keys
    (``simulator.randomness``): the same actions give the same pages, clicks and orders — the property the
    common-random-number pairing rests on (tested)."""
    env.reset(options={"session_index": int(index), "luck_seed": luck_seed})
    steps: list[dict] = []
    while True:
        t = len(steps)
        u = float(actions[t]) if t < len(actions) else float(then)
        _, _, done, _, info = env.step(np.array([u], dtype=np.float32))
        steps.append({"clicks": int(info["clicks"]), "orders": int(info["orders"]),
                      "left": bool(info.get("left", False)), "u": u})
        if done or (max_steps and len(steps) >= max_steps):
            return steps


def discounted(steps: Sequence[dict], reward: RewardConfig, gamma: float) -> float:
    """The discounted return of `steps` (from :func:`play`) under `reward`."""
    g = 0.0
    for st in reversed(steps):
        g = reward.reward(st["clicks"], st["orders"], st["left"]) + gamma * g
    return float(g)


class PairedRollouts:
    """Common-random-number paired rollouts (a simulator-only technique: a real app cannot replay a user). At page
    ``t`` of session ``index`` reached with actions ``prefix`` (u_0 .. u_{t-1}), two continuations of the same
    session with the same random numbers: (i) ``u`` at page t, then u = 0 (a = 1); (ii) u = 0 at page t and after.
    ``advantage`` returns their discounted returns from page t (G_i, G_ii); G_i − G_ii is the advantage of
    deviating from the baseline at that one page, A^base(s_t, u), with most of the two returns' noise shared.

    The branch is a replay from the session's start (the prefix is deterministic given its actions, so page t's
    state is the one the caller saw), in an env of its own (``env.branch()``). ``horizon`` > 0 cuts both
    continuations after that many pages. ``luck_seed_ii`` plays (ii) with other luck (the independent-noise
    control of the variance check)."""

    def __init__(self, env: FusionEnv, *, gamma: float = 0.9, horizon: int = 0):
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0 (0: to the end of the session), got {horizon}")
        self.env, self.gamma, self.horizon = env.branch(), float(gamma), int(horizon)
        self.reward = env.reward_cfg
        self.sessions_played = 0

    def continuation(self, index: int, prefix: Sequence[float], u: float, *, luck_seed: int | None = None
                     ) -> list[dict]:
        """The pages from t = len(prefix) on, with u at t and u = 0 after (empty when the session ended before
        page t — it cannot, for a prefix the caller played)."""
        t = len(prefix)
        steps = play(self.env, index, [*prefix, u], luck_seed=luck_seed,
                     max_steps=t + self.horizon if self.horizon else 0)
        self.sessions_played += 1
        if len(steps) <= t:
            raise RuntimeError(f"session {index} ended before page {t}: the prefix does not replay "
                               "(the env is not deterministic for its session seed)")
        return steps[t:]

    def advantage(self, index: int, prefix: Sequence[float], u: float, *, reward: RewardConfig | None = None,
                  luck_seed_ii: int | None = None, last_reward: float | None = None) -> tuple[float, float]:
        """(G_i, G_ii) from page t = len(prefix). ``last_reward``: the caller played these actions and the session
        ended at page t with that reward, so G_i is it (no replay)."""
        if luck_seed_ii is not None and len(prefix):
            raise ValueError("luck_seed_ii needs a first-page state (empty prefix): with other luck the prefix "
                             "would not replay to the same state")
        rw = reward or self.reward
        gi = (float(last_reward) if last_reward is not None and reward is None
              else discounted(self.continuation(index, prefix, u), rw, self.gamma))
        gii = discounted(self.continuation(index, prefix, 0.0, luck_seed=luck_seed_ii), rw, self.gamma)
        return gi, gii

    def episode_targets(self, index: int, us: Sequence[float], last_reward: float) -> list[float]:
        """G_i − G_ii at every page t of an episode the caller played with actions `us` (u_t), the same values as
        ``advantage(index, us[:t], us[t])`` page by page (the episode's own last reward is its last page's (i)), with
        about half the replays: the continuation "u_0 .. u_t, then u = 0" is branch (i) at page t and branch (ii) at
        page t + 1, so without a horizon each is played once (with a horizon the two are cut at different pages and
        every branch is played). A u_t of exactly 0 is a target of 0 without playing."""
        us = [float(u) for u in us]
        if self.horizon:
            out = []
            for t, u in enumerate(us):
                gi, gii = (0.0, 0.0) if u == 0.0 else self.advantage(
                    index, us[:t], u, last_reward=last_reward if t == len(us) - 1 else None)
                out.append(gi - gii)
            return out
        out: list[float] = []
        base: list[dict] | None = None  # the continuation from page t of u_0 .. u_{t-1}, then u = 0: branch (ii)
        for t, u in enumerate(us):
            if u == 0.0:
                out.append(0.0)
                base = base[1:] if base else None  # (ii) at t + 1 is the same play's tail
                continue
            if base is None:
                base = self.continuation(index, us[:t], 0.0)
            gii = discounted(base, self.reward, self.gamma)
            if t == len(us) - 1:
                out.append(float(last_reward) - gii)
                break
            cont = self.continuation(index, us[:t], u)
            out.append(discounted(cont, self.reward, self.gamma) - gii)
            base = cont[1:] or None
        return out

    def close(self) -> None:
        self.env.close()

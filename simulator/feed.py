"""A second world unlike shops: a news / video feed (``WorldConfig(domain="feed")``).

- **Items**: a topic (the contracts' ``category``), a source / creator (``brand``), a story within the topic,
  quality and popularity; an item vector ``v`` = topic centroid + story offset + source offset + noise (the
  cloud's ID embedding rows are a noisy projection of it, as in the shop world); no price (``price_level`` 0)
  and no geo (lat/lon 0).
- **Users**: a long-term taste ``u`` in the same space (the cloud sees a noisy copy) and a patience.
- **Queries** are feed surfaces: "for you" (every topic) and channels (a few topics each).
- **Sessions**: a hidden intent, one of the surface's (topic, story) pairs, uniformly: the finite set the
  informed oracle (``simulator.arms.InformedReranker``) keeps a posterior over.
- **The cloud re-shows items**: page k ≥ 1 fills ``reshow_share`` of its slots with items of page k − 1
  (``cloud_data/serving.json``; ``cloud.ranking.pipeline.SearchPipeline.page_slots``), so the same items come
  back in later lists of a session; the phone's device session appends an item again once its first copy has
  been revealed (``RerankSession(reshow=True)``).
- **User model** (:class:`FeedUserModel`): utility from intent match (vector and topic) and long-term taste;
  saturation on the topic; an item already read (clicked) is rarely clicked again, one already looked at a little
  less (every showing draws its own luck). Parameters: :class:`FeedUserConfig`, docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import Context, PageItem
from edge_rerank.simulator.randomness import crn_uniform_array
from edge_rerank.simulator.user_model import USER_MODELS, IntentHypotheses, UserModel, UserModelConfig, UserState
from edge_rerank.simulator.world import WORLD_DOMAINS, SessionSpec, World, WorldConfig, _unit

TOPICS = ("world", "politics", "business", "tech", "science", "health", "sports", "movies", "music", "gaming",
          "food", "travel")
CHANNELS = {"news": (0, 1, 2), "tech & science": (3, 4, 5), "entertainment": (7, 8, 9), "lifestyle": (5, 10, 11),
            "sports": (6,)}
FOR_YOU = "for you"


class FeedWorld(World):
    """The feed world (see the module docstring). Built by ``World(WorldConfig(domain="feed"))``."""

    reshows_items = True

    def __init__(self, cfg: WorldConfig):  # noqa: D107 - shares World's interface, not its draws
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0xFEED])
        K, T, S, B = cfg.latent_dim, cfg.n_categories, cfg.feed_stories, cfg.feed_sources
        self.centroids = _unit(rng.standard_normal((T, K)))
        self.story_offsets = _unit(rng.standard_normal((T, S, K)))
        self.brand_offsets = _unit(rng.standard_normal((B, K)))
        n = cfg.n_items
        self.item_id = np.arange(100_000, 100_000 + n, dtype=np.int64)
        # a source publishes mostly in its two home topics
        home = rng.integers(0, T, (B, 2))
        self.brand = rng.integers(0, B, n)
        own = rng.random(n) < 0.7
        self.category = np.where(own, home[self.brand, rng.integers(0, 2, n)], rng.integers(0, T, n))
        self.story = rng.integers(0, S, n)
        self.latent = _unit(self.centroids[self.category] + 0.8 * self.story_offsets[self.category, self.story]
                            + 0.4 * self.brand_offsets[self.brand] + 0.4 * rng.standard_normal((n, K)) / np.sqrt(K))
        self.price_level = np.zeros(n, dtype=int)
        self.loc = np.zeros((n, 2))
        self.quality = rng.beta(2.0, 2.0, n)
        self.popularity = rng.lognormal(3.0, 1.0, n)
        U = cfg.n_users
        self.user_ids = [f"u{k:05d}" for k in range(U)]
        self.user_latent = 0.6 * _unit(rng.standard_normal((U, K)))
        self.user_price = np.zeros(U)
        self.user_dist_sens = np.zeros(U)
        self.user_home = np.zeros((U, 2))
        self.queries: dict[str, list[int]] = {FOR_YOU: list(range(T))}
        self.queries.update({q: [c for c in cats if c < T] for q, cats in CHANNELS.items()})
        proj, _ = np.linalg.qr(rng.standard_normal((cfg.emb_dim, K)))
        self.emb_rows = (self.latent @ proj.T + cfg.emb_noise * rng.standard_normal((n, cfg.emb_dim))
                         / np.sqrt(cfg.emb_dim)).astype(np.float32)
        self.user_profile = (self.user_latent @ proj.T + cfg.profile_noise * rng.standard_normal((U, cfg.emb_dim))
                             / np.sqrt(cfg.emb_dim)).astype(np.float32)
        self.user_price_profile = np.zeros(U)
        self.user_patience = np.exp(cfg.patience_sigma * rng.standard_normal(U))
        self._query_names = list(self.queries)
        w = np.array([4.0 if q == FOR_YOU else 1.0 for q in self._query_names])
        self._query_cdf = np.cumsum(w / w.sum())
        # the finite intent space: every (topic, story)
        self.intent_vectors = _unit(self.centroids[:, None, :] + 1.0 * self.story_offsets).reshape(T * S, K)
        self.intent_topic = np.repeat(np.arange(T), S)

    def intents_for(self, query: str) -> np.ndarray:
        """The intents a session on this surface may have (indices into intent_vectors)."""
        S = self.cfg.feed_stories
        return np.array([t * S + s for t in self.queries[query] for s in range(S)], dtype=np.int64)

    def session(self, index: int, seed: int) -> SessionSpec:
        cfg = self.cfg
        u = crn_uniform_array(cfg.seed, seed, index, np.arange(4, dtype=np.int64))
        user = min(int(u[0] * cfg.n_users), cfg.n_users - 1)
        query = self._query_names[min(int(np.searchsorted(self._query_cdf, u[1], side="right")),
                                      len(self._query_names) - 1)]
        ctx = Context(lat=0.0, lon=0.0, hour=7 + min(int(u[2] * 16), 15), device="phone")
        intents = self.intents_for(query)
        intent = int(intents[min(int(u[3] * len(intents)), len(intents) - 1)])
        sess_seed = int(crn_uniform_array(cfg.seed, seed, index, -1) * float(1 << 53)) * 1024 + (index & 1023)
        return SessionSpec(index=index, session_id=f"s{seed}-{index:07d}", seed=sess_seed, user=user, query=query,
                           context=ctx, intent_z=self.intent_vectors[intent], intent_price=0.0,
                           intent_area=(0.0, 0.0), predecided=False, intent=intent)

    def provision_cloud(self, root: str | Path) -> Path:
        out = super().provision_cloud(root)
        from edge_rerank.cloud.catalog import save_serving

        save_serving(out, reshow_share=self.cfg.reshow_share)
        return out


@dataclass(frozen=True)
class FeedUserConfig(UserModelConfig):
    """The feed user's parameters: UserModelConfig's (examination, skims, dwell, leaving) plus these; the defaults
    that differ were calibrated once on the cloud order (docs/simulator.md, "The feed world")."""

    w_quality: float = 1.0
    w_longterm: float = 1.4
    w_intent: float = 1.6  # <z, v>: the hidden (topic, story) direction
    w_topic: float = 0.6  # the item is on the intent's topic
    click_threshold: float = 2.4
    topic_saturation: float = 0.08  # utility lost per earlier examined item of the same topic, counted up to the cap
    topic_saturation_cap: int = 6
    reshow_penalty: float = 0.3  # per earlier examination of this very item (seen it, not interested enough)
    reread_penalty: float = 2.5  # the item was already clicked (read / watched) in this session
    max_pages: int = 4
    order_max: float = 0.0  # a feed has no orders


class FeedUserModel(UserModel):
    """Utility of item i under intent j: ``w_quality·q + w_longterm·<u, v> + w_intent·<z_j, v> + w_topic·[topic_i =
    topic_j]``; then topic saturation and the re-show penalties (``effective_utility``)."""

    def __init__(self, world: World, cfg: UserModelConfig | None = None):
        super().__init__(world, cfg if cfg is not None else FeedUserConfig())
        if not isinstance(self.cfg, FeedUserConfig):
            raise TypeError("the feed world's user model takes a FeedUserConfig")

    def utility_under(self, user: int, intents: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Utility [len(intents), len(rows)] of items `rows` for `user` under each intent."""
        w, c = self.world, self.cfg
        v = w.latent[rows]
        base = c.w_quality * w.quality[rows] + c.w_longterm * v @ w.user_latent[user]
        match = w.intent_topic[intents][:, None] == w.category[rows][None, :]
        return base[None, :] + c.w_intent * w.intent_vectors[intents] @ v.T + c.w_topic * match

    def utility(self, spec: SessionSpec, rows: np.ndarray) -> np.ndarray:
        return self.utility_under(spec.user, np.array([spec.intent]), rows)[0]

    def saturation_key(self, item: PageItem) -> int:
        return item.category

    def saturation(self, n_seen: float) -> float:
        c = self.cfg
        return c.topic_saturation * min(n_seen, c.topic_saturation_cap)

    def reshow_penalty(self, n_examined: float, clicked: bool) -> float:
        c = self.cfg
        return c.reshow_penalty * n_examined + (c.reread_penalty if clicked else 0.0)

    def effective_utility(self, utility: float, brand: int, state: UserState, item_id: int = -1) -> float:
        return (utility - self.saturation(state.brand_seen[brand])
                - self.reshow_penalty(state.item_seen[item_id], item_id in state.clicked_items))

    def intent_hypotheses(self, spec: SessionSpec) -> IntentHypotheses:
        intents = self.world.intents_for(spec.query)
        return IntentHypotheses(log_prior=np.full(len(intents), -np.log(len(intents))),
                                utility=lambda rows: self.utility_under(spec.user, intents, rows),
                                truth=int(np.flatnonzero(intents == spec.intent)[0]))


WORLD_DOMAINS["feed"] = FeedWorld
USER_MODELS["feed"] = FeedUserModel

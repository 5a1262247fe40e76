"""A seeded synthetic world: catalog (shops), users, queries, and the sessions they start.

Latent structure (what the simulator knows and the cloud only partly sees):
- every item has a unit latent vector ``v`` (category centroid + brand offset + noise);
- every user has a long-term preference ``u`` in the same space, a price preference and a distance
  sensitivity; the cloud sees a noisy copy of ``u`` (its long-term profile) but no session intent;
- every session has a latent **intent**: a target direction ``z`` (a brand/style within the query's
  categories), a price level and an area to be near. Some sessions are *pre-decided*: the area is the
  user's home, not where they search from (SPEC: "searched hotpot nearby but clicks shops near home").
The cloud's ID embedding rows are a noisy projection of ``v``: what a trained ID embedding would know.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import Context
from edge_rerank.simulator.randomness import crn_uniform_array

CATEGORY_QUERIES = ("hotpot", "noodles", "sushi", "bbq", "cafe", "bakery", "pizza", "burger", "dim sum",
                    "salad", "ramen", "dessert")
DOMAINS = ("shop", "feed")
BROAD_QUERIES = {"dinner": (0, 2, 3, 6), "lunch": (1, 7, 9, 10), "something sweet": (4, 5, 11)}
# polysemous queries (WorldConfig.multi_intent_queries): each means 2-3 unrelated categories, a session one of them
MULTI_INTENT_NAMES = ("apple", "jaguar", "mercury", "java", "amazon", "python", "orange", "corona")
MAX_MULTI_INTENT = 64  # beyond the named ones: "polysemous-09" ...


def multi_intent_names(n: int) -> list[str]:
    return [*MULTI_INTENT_NAMES[:n], *(f"polysemous-{k + 1:02d}" for k in range(len(MULTI_INTENT_NAMES), n))]


@dataclass(frozen=True)
class WorldConfig:
    """The simulated world's size, noise and query mix (defaults: the demo's shop world).

    Polysemous queries (for the coarse stage's multi-head towers, issue 16; all off by default, and then the world is
    bit-identical to one without these fields): ``multi_intent_queries`` adds queries that each mean 2-3 far-apart
    categories, one per session (the user's taste-closest with probability ``intent_by_taste``; 0 hides the meaning
    from anything that sees only the user). ``polysemy_distractors`` makes such a query also *recall* the categories
    nearest the sum of its meanings' centroids, which no session means: without them every recalled item is of some
    meaning, so "relevant to any meaning" is true of every candidate and one query vector that adds up the meanings
    loses nothing; with them, that sum points at items that should rank below every meaning's (the case multi-head
    matching is meant for). See "Coarse stage: multi-head vs single-vector" in docs/results/coarse_ranking.md for
    what it did and did not show.
    """

    seed: int = 0
    n_items: int = 2400
    n_users: int = 600
    n_categories: int = 12
    brands_per_category: int = 4
    latent_dim: int = 8
    emb_dim: int = 16
    dense_dim: int = 16
    map_km: float = 10.0
    emb_noise: float = 0.15  # noise of the cloud's ID embedding rows around the true latent
    profile_noise: float = 0.3  # noise of the cloud's long-term user profile
    predecided_share: float = 0.25  # sessions whose intended area is the user's home
    patience_sigma: float = 0.35  # per-user patience: lognormal(0, sigma), median 1
    # --- multi-intent ("polysemous") queries, off by default (they change the query mix of every session) ---
    multi_intent_queries: int = 0  # extra queries, each meaning 2-3 mutually distant categories
    intent_by_taste: float = 0.7  # share of their sessions whose meaning is the user's (taste-closest) one
    # recall-only categories of each polysemous query (0: none, the world as before). Why: with recall = the union of
    # the meanings, "relevant to *some* meaning" is true of every candidate, so a single query vector that adds up the
    # meanings loses nothing and multi-head towers have no OR to represent. Real polysemous queries also match items
    # that mean none of their senses ("apple" matches apple-pie shops); here each recalls, besides its meanings, the
    # `polysemy_distractors` categories whose centroids are closest to the *sum* of its meanings' centroids — exactly
    # the items a one-vector query summing its meanings scores high. No session means them (users judge them by the
    # ordinary utility), so they are candidates a ranker should put below every meaning's items.
    polysemy_distractors: int = 0
    # --- the world's domain: "shop" (the default, above) or "feed" (simulator/feed.py: a news / video feed) ---
    domain: str = "shop"
    feed_sources: int = 40  # feed: sources / creators (the contracts' `brand`)
    feed_stories: int = 3  # feed: stories per topic; a session's hidden intent is one (topic, story)
    reshow_share: float = 0.2  # feed: share of a later page's slots the cloud fills with earlier pages' items

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if not 0 <= self.multi_intent_queries <= MAX_MULTI_INTENT:
            raise ValueError(f"multi_intent_queries must be in [0, {MAX_MULTI_INTENT}], "
                             f"got {self.multi_intent_queries}")
        if self.multi_intent_queries and self.domain != "shop":
            raise ValueError("multi-intent queries exist in the shop world only")
        if not 0.0 <= self.intent_by_taste <= 1.0:
            raise ValueError(f"intent_by_taste must be in [0, 1], got {self.intent_by_taste}")
        if self.polysemy_distractors < 0 or (self.polysemy_distractors and not self.multi_intent_queries):
            raise ValueError("polysemy_distractors needs multi_intent_queries > 0 and must be >= 0, got "
                             f"{self.polysemy_distractors}")
        if self.polysemy_distractors and self.polysemy_distractors + 3 > self.n_categories:
            raise ValueError(f"polysemy_distractors={self.polysemy_distractors} plus up to 3 meanings exceed "
                             f"n_categories={self.n_categories}")

    @property
    def n_brands(self) -> int:
        if self.domain == "feed":
            return self.feed_sources
        return self.n_categories * self.brands_per_category


@dataclass(frozen=True)
class SessionSpec:
    """One query view. Identical across A/B arms, so arms see the same users with the same intents."""

    index: int
    session_id: str
    seed: int
    user: int
    query: str
    context: Context
    intent_z: np.ndarray  # unit [K]
    intent_price: float
    intent_area: tuple[float, float]
    predecided: bool
    intent: int = -1  # feed: index of the hidden (topic, story) intent (FeedWorld.intent_topic / intent_vectors)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


# domain -> World subclass, filled by each domain's module on import (simulator/feed.py registers "feed";
# the package imports it), so this module never imports its subclasses
WORLD_DOMAINS: dict[str, type] = {}


class World:
    """The shop world; ``World(WorldConfig(domain="feed"))`` builds the domain's subclass
    (:class:`simulator.feed.FeedWorld`)."""

    reshows_items = False  # does the cloud re-show items of earlier pages in later ones (the feed does)

    def __new__(cls, cfg: WorldConfig | None = None):
        if cls is World and cfg is not None and cfg.domain != "shop":
            if cfg.domain not in WORLD_DOMAINS:
                raise ValueError(f"unknown world domain {cfg.domain!r}; known: {['shop', *WORLD_DOMAINS]}")
            return super().__new__(WORLD_DOMAINS[cfg.domain])
        return super().__new__(cls)

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        K, C, B = cfg.latent_dim, cfg.n_categories, cfg.n_brands
        self.centroids = _unit(rng.standard_normal((C, K)))
        self.brand_offsets = _unit(rng.standard_normal((B, K)))
        n = cfg.n_items
        self.item_id = np.arange(100_000, 100_000 + n, dtype=np.int64)
        self.category = rng.integers(0, C, n)
        self.brand = self.category * cfg.brands_per_category + rng.integers(0, cfg.brands_per_category, n)
        self.latent = _unit(self.centroids[self.category] + 0.9 * self.brand_offsets[self.brand]
                            + 0.5 * rng.standard_normal((n, K)) / np.sqrt(K))
        base_price = rng.uniform(0.5, 3.5, C)
        self.price_level = np.clip(np.rint(base_price[self.category] + rng.normal(0, 0.9, n)), 0, 4).astype(int)
        self.loc = rng.uniform(0, cfg.map_km, (n, 2))
        self.quality = rng.beta(2.0, 2.0, n)
        self.popularity = rng.lognormal(3.0, 1.0, n)
        # users
        U = cfg.n_users
        self.user_ids = [f"u{k:05d}" for k in range(U)]
        self.user_latent = 0.6 * _unit(rng.standard_normal((U, K)))
        self.user_price = rng.uniform(0.0, 4.0, U)
        self.user_dist_sens = rng.uniform(0.10, 0.35, U)
        self.user_home = rng.uniform(0, cfg.map_km, (U, 2))
        self.queries: dict[str, list[int]] = {q: [i] for i, q in enumerate(CATEGORY_QUERIES[:C])}
        self.queries.update({q: [c for c in cats if c < C] for q, cats in BROAD_QUERIES.items()})
        # what the cloud knows: ID embeddings and user profiles in a 16-d space (orthonormal projection)
        proj, _ = np.linalg.qr(rng.standard_normal((cfg.emb_dim, K)))
        self.emb_rows = (self.latent @ proj.T + cfg.emb_noise * rng.standard_normal((n, cfg.emb_dim))
                         / np.sqrt(cfg.emb_dim)).astype(np.float32)
        self.user_profile = (self.user_latent @ proj.T + cfg.profile_noise * rng.standard_normal((U, cfg.emb_dim))
                             / np.sqrt(cfg.emb_dim)).astype(np.float32)
        self.user_price_profile = np.clip(self.user_price + rng.normal(0, 0.5, U), 0, 4)
        # patience (drawn last so every earlier array is unchanged): divides the per-screen leaving probability
        self.user_patience = np.exp(cfg.patience_sigma * rng.standard_normal(U))
        self.meanings: dict[str, list[int]] = self._multi_intent(cfg)  # polysemous query -> its categories
        self.distractors: dict[str, list[int]] = self._distractors(cfg)  # ... -> recall-only categories
        self.queries.update({q: sorted(m + self.distractors.get(q, [])) for q, m in self.meanings.items()})
        self._query_names = list(self.queries)
        self._query_weights = np.array([3.0 if q in CATEGORY_QUERIES or q in self.meanings else 1.5
                                        for q in self._query_names])
        self._query_weights /= self._query_weights.sum()
        self._query_cdf = np.cumsum(self._query_weights)
        self._query_brands = {q: [c * cfg.brands_per_category + j for c in self.meanings.get(q, cats)
                                  for j in range(cfg.brands_per_category)] for q, cats in self.queries.items()}
        self._draw_keys = np.arange(8 + 2 * ((cfg.latent_dim + 4) // 2), dtype=np.int64)

    def _multi_intent(self, cfg: WorldConfig) -> dict[str, list[int]]:
        """Polysemous queries: each the union of 2-3 categories chosen far apart (greedy: the next is the category
        least similar to those taken), from their own seeded generator, so the rest of the world is unchanged."""
        if cfg.multi_intent_queries == 0:
            return {}
        rng = np.random.default_rng((cfg.seed, 16))
        sim = self.centroids @ self.centroids.T
        out = {}
        starts = rng.permutation(cfg.n_categories)
        for k, name in enumerate(multi_intent_names(cfg.multi_intent_queries)):
            cats = [int(starts[k % cfg.n_categories])]
            for _ in range(int(rng.integers(2, 4)) - 1):
                cats.append(int(np.argmin(np.where(np.isin(np.arange(cfg.n_categories), cats), np.inf,
                                                   sim[cats].max(axis=0)))))
            out[name] = sorted(cats)
        return out

    def _distractors(self, cfg: WorldConfig) -> dict[str, list[int]]:
        """Per polysemous query, the `polysemy_distractors` other categories nearest the direction of the sum of its
        meanings' centroids (deterministic: no draws, so nothing else in the world changes)."""
        if cfg.polysemy_distractors == 0:
            return {}
        out = {}
        for q, cats in self.meanings.items():
            s = self.centroids[cats].sum(axis=0)
            sim = np.where(np.isin(np.arange(cfg.n_categories), cats), -np.inf, self.centroids @ _unit(s))
            out[q] = sorted(int(c) for c in np.argsort(-sim, kind="stable")[: cfg.polysemy_distractors])
        return out

    def meaning_of(self, query: str, user: int, u_taste: float, u_pick: float) -> int:
        """The category a session of a polysemous query means: the user's own (the meaning whose centroid is
        closest to their long-term taste) with probability ``intent_by_taste``, else one at random."""
        cats = self.meanings[query]
        if u_taste < self.cfg.intent_by_taste:
            return cats[int(np.argmax(self.centroids[cats] @ self.user_latent[user]))]
        return cats[min(int(u_pick * len(cats)), len(cats) - 1)]

    def session_meaning(self, index: int, seed: int, query: str, user: int) -> int:
        """The category session `index` of a polysemous `query` means (its own draws: other sessions' are
        unchanged by the feature); -1 for any other query."""
        if query not in self.meanings:
            return -1
        ut = crn_uniform_array(self.cfg.seed, seed, index, np.array([1000, 1001], dtype=np.int64))
        return self.meaning_of(query, user, float(ut[0]), float(ut[1]))

    def row_of(self, item_id: int) -> int:
        return int(item_id - self.item_id[0])

    def items_for(self, query: str) -> np.ndarray:
        return np.flatnonzero(np.isin(self.category, self.queries[query]))

    def session(self, index: int, seed: int) -> SessionSpec:
        """The `index`-th session of a run seeded with `seed` (deterministic; independent of other sessions).

        Draws are counter-based (splitmix64 of (world seed, run seed, index, k)), so any session can be made
        on its own, in any order, on any worker, cheaply."""

        cfg = self.cfg
        K = cfg.latent_dim
        u = crn_uniform_array(cfg.seed, seed, index, self._draw_keys)
        user = min(int(u[0] * cfg.n_users), cfg.n_users - 1)
        query = self._query_names[min(int(np.searchsorted(self._query_cdf, u[1], side="right")),
                                      len(self._query_names) - 1)]
        # standard normals by Box-Muller from pairs of uniforms: 2 for `where`, K for the intent, 1 for price
        n = (K + 4) // 2
        u1, u2 = np.maximum(u[8: 8 + n], 1e-300), u[8 + n: 8 + 2 * n]
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
        home = self.user_home[user]
        if u[2] < 0.5:
            where = home + 0.5 * z[:2]
        else:
            where = cfg.map_km * u[3:5]
        where = np.clip(where, 0, cfg.map_km)
        ctx = Context(lat=float(where[0]), lon=float(where[1]), hour=7 + min(int(u[5] * 16), 15), device="phone")
        brands = self._query_brands[query]
        if query in self.meanings:  # one meaning of a polysemous query
            c = self.session_meaning(index, seed, query, user)
            brands = [c * cfg.brands_per_category + j for j in range(cfg.brands_per_category)]
        target_brand = brands[min(int(u[6] * len(brands)), len(brands) - 1)]
        tc = target_brand // cfg.brands_per_category
        zi = _unit(self.centroids[tc] + 1.2 * self.brand_offsets[target_brand] + 0.4 * z[2: 2 + K] / np.sqrt(K))
        intent_price = float(np.clip(self.user_price[user] + 0.8 * z[2 + K], 0, 4))
        predecided = bool(u[7] < cfg.predecided_share)
        area = home if predecided else where
        sess_seed = int(crn_uniform_array(cfg.seed, seed, index, -1) * float(1 << 53)) * 1024 + (index & 1023)
        return SessionSpec(index=index, session_id=f"s{seed}-{index:07d}", seed=sess_seed,
                           user=user, query=query, context=ctx, intent_z=zi, intent_price=intent_price,
                           intent_area=(float(area[0]), float(area[1])), predecided=predecided)

    def provision_cloud(self, root: str | Path) -> Path:
        """Write the cloud's data directory for this world (catalog, profiles, queries, embeddings, ranker)."""
        from edge_rerank.cloud.catalog import save_cloud_data  # provisioning the cloud's database, not a runtime call
        from edge_rerank.cloud.ranking.fine import default_ranker_weights

        items = {"item_id": self.item_id, "category": self.category, "brand": self.brand,
                 "price_level": self.price_level, "lat": self.loc[:, 0], "lon": self.loc[:, 1],
                 "quality": self.quality.astype(np.float32), "popularity": self.popularity.astype(np.float32)}
        return save_cloud_data(root, items=items, user_ids=self.user_ids, user_pref=self.user_profile,
                               user_price_pref=self.user_price_profile, user_home=self.user_home,
                               queries=self.queries, embedding_ids=self.item_id, embedding_rows=self.emb_rows,
                               ranker=default_ranker_weights(self.cfg.dense_dim, self.cfg.seed))

"""Multi-intent (polysemous) queries in the simulated shop world (issue 16: something for multi-head coarse towers
to separate): off by default and then the world is unchanged; on, each such query means 2-3 distinct categories,
its recall set is their union, and each session means exactly one of them — the user's taste-closest one at the
configured rate."""

from __future__ import annotations

import numpy as np
import pytest

from edge_rerank.simulator.world import CATEGORY_QUERIES, MULTI_INTENT_NAMES, World, WorldConfig

SMALL = dict(seed=3, n_items=600, n_users=80)


def test_off_by_default_and_then_the_world_is_unchanged():
    a, b = World(WorldConfig(**SMALL)), World(WorldConfig(**SMALL, multi_intent_queries=0, intent_by_taste=0.1))
    assert a.meanings == {} and a.queries == b.queries
    for i in range(200):
        sa, sb = a.session(i, 7), b.session(i, 7)
        assert (sa.query, sa.user, sa.intent_price) == (sb.query, sb.user, sb.intent_price)
        np.testing.assert_array_equal(sa.intent_z, sb.intent_z)


def test_polysemous_queries_mean_one_of_their_categories_per_session():
    w = World(WorldConfig(**SMALL, multi_intent_queries=4, intent_by_taste=0.7))
    assert len(w.meanings) == 4
    for q, cats in w.meanings.items():
        assert q not in CATEGORY_QUERIES and 2 <= len(cats) <= 3 and len(set(cats)) == len(cats)
        assert set(np.unique(w.category[w.items_for(q)]).tolist()) == set(cats)
    hits, taste, near = 0, 0, []
    for i in range(3000):
        s = w.session(i, 11)
        if s.query not in w.meanings:
            continue
        cats = w.meanings[s.query]
        c = w.session_meaning(i, 11, s.query, s.user)
        assert c in cats
        # the session's intent is a brand of that category: its direction is nearest one of that category's brands
        bpc = w.cfg.brands_per_category
        templates = w.centroids[np.arange(w.cfg.n_brands) // bpc] + 1.2 * w.brand_offsets
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
        near.append(int(np.argmax(templates @ s.intent_z)) // bpc == c)
        hits += 1
        taste += c == cats[int(np.argmax(w.centroids[cats] @ w.user_latent[s.user]))]
    assert hits > 300 and np.mean(near) > 0.95
    assert all(w.session_meaning(i, 11, "sushi", 0) == -1 for i in range(3))
    # 70 % by taste plus the random picks that happen to agree (1/2 or 1/3 of the other 30 %)
    assert 0.70 < taste / hits < 0.95


def test_invalid_multi_intent_configs_are_refused():
    with pytest.raises(ValueError, match="multi_intent_queries"):
        WorldConfig(multi_intent_queries=99)
    with pytest.raises(ValueError, match="intent_by_taste"):
        WorldConfig(multi_intent_queries=2, intent_by_taste=1.5)
    with pytest.raises(ValueError, match="shop world only"):
        WorldConfig(multi_intent_queries=2, domain="feed")


# --- recall-only ("distractor") categories of polysemous queries: WorldConfig.polysemy_distractors ---------------

def test_distractors_off_by_default_and_zero_leaves_the_multi_intent_world_unchanged():
    assert WorldConfig().polysemy_distractors == 0
    a = World(WorldConfig(**SMALL, multi_intent_queries=4))
    b = World(WorldConfig(**SMALL, multi_intent_queries=4, polysemy_distractors=0))
    assert a.distractors == b.distractors == {}
    assert a.queries == b.queries and all(a.queries[q] == m for q, m in a.meanings.items())


def test_distractors_widen_recall_only_toward_the_sum_of_the_meanings():
    plain = World(WorldConfig(**SMALL, multi_intent_queries=6))
    w = World(WorldConfig(**SMALL, multi_intent_queries=6, polysemy_distractors=2))
    assert w.meanings == plain.meanings
    for q, cats in w.meanings.items():
        dis = w.distractors[q]
        assert len(dis) == 2 and not set(dis) & set(cats)
        assert set(np.unique(w.category[w.items_for(q)]).tolist()) == set(cats) | set(dis)  # recalled
        # the documented direction: of all categories that are not meanings, the distractors are the ones a single
        # query vector adding up the meanings' centroids scores highest
        s = w.centroids[cats].sum(0)
        others = [c for c in range(w.cfg.n_categories) if c not in cats]
        ranked = sorted(others, key=lambda c: -float(w.centroids[c] @ s))
        assert set(ranked[:2]) == set(dis)
    for q, cats in plain.queries.items():  # every other query's recall is unchanged
        if q not in w.meanings:
            assert w.queries[q] == cats
    # sessions are the same draws (only recall sets grow), and no session means a distractor category
    for i in range(1500):
        sa, sb = plain.session(i, 5), w.session(i, 5)
        assert (sa.query, sa.user, sa.intent_price, sa.predecided) == (sb.query, sb.user, sb.intent_price,
                                                                       sb.predecided)
        np.testing.assert_array_equal(sa.intent_z, sb.intent_z)
        if sb.query in w.meanings:
            assert w.session_meaning(i, 5, sb.query, sb.user) in w.meanings[sb.query]


def test_more_polysemous_queries_than_named_ones_get_generated_names():
    w = World(WorldConfig(**SMALL, n_categories=24, multi_intent_queries=12))
    names = list(w.meanings)
    assert len(names) == 12 and names[:8] == list(MULTI_INTENT_NAMES) and names[8] == "polysemous-09"
    assert all(max(c) < 24 for c in w.meanings.values())


def test_invalid_distractor_configs_are_refused():
    with pytest.raises(ValueError, match="polysemy_distractors"):
        WorldConfig(polysemy_distractors=2)  # without polysemous queries
    with pytest.raises(ValueError, match="polysemy_distractors"):
        WorldConfig(multi_intent_queries=2, polysemy_distractors=-1)
    with pytest.raises(ValueError, match="exceed n_categories"):
        WorldConfig(multi_intent_queries=2, polysemy_distractors=10)

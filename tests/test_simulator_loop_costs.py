"""The cheaper cloud-only loop's parts against their straightforward forms (issue 18, branch h26): page items built
from columns vs PageItem's constructor, the one-array-key draw path vs the scalar stream, and no reference cycles
left by a finished session (they made the cyclic GC a fifth to a third of the loop). Whole-session outcomes are
pinned in tests/test_simulator_outcome_digest.py."""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest

from edge_rerank.cloud.ranking import pipeline as pipeline_mod
from edge_rerank.device_sdk.contracts import PageItem, SearchRequest
from edge_rerank.simulator.randomness import crn_uniform, crn_uniform_array


def _reference_items(pl, req: SearchRequest, fp16_rows: bool) -> list[PageItem]:
    """The page's items as search_with_info built them before (one PageItem(...) per row, then the fp16 rows)."""
    ranking, _ = pl._ranking(req)
    start = req.page_index * req.page_size
    sl, _ = pl.page_slots(len(ranking.rows), req.page_index, req.page_size)
    rows, scores, dense = ranking.rows[sl], ranking.scores[sl], ranking.hidden[sl]
    it = pl.catalog.items
    emb, found = pl.store.get(it["item_id"][rows])
    items = [PageItem(item_id=int(it["item_id"][r]), cloud_position=start + k, cloud_score=float(scores[k]),
                      cloud_dense=dense[k], id_embedding=emb[k], category=int(it["category"][r]),
                      brand=int(it["brand"][r]), price_level=int(it["price_level"][r]),
                      lat=float(it["lat"][r]), lon=float(it["lon"][r]), embedding_found=bool(found[k]))
             for k, r in enumerate(rows)]
    if fp16_rows and items:
        rows16 = np.stack([x.id_embedding for x in items]).astype("<f2").astype(np.float32)
        for x, row in zip(items, rows16, strict=True):
            x.id_embedding = row
    return items


def _same_item(a: PageItem, b: PageItem) -> None:
    for f in dataclasses.fields(PageItem):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert type(x) is type(y), f.name
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("fp16_rows", [True, False])
def test_page_items_are_field_for_field_what_the_constructor_builds(inproc_cloud, world, direct, fp16_rows,
                                                                    monkeypatch):
    monkeypatch.setattr(pipeline_mod, "_PAGE_ITEM_DIRECT", direct)  # False: the constructor fallback
    pl = inproc_cloud._pipeline
    n = 0
    for i in range(12):
        spec = world.session(i, 21)
        for page_index in range(3):
            req = SearchRequest(request_id=f"r{i}-{page_index}", session_id=spec.session_id,
                                user_id=world.user_ids[spec.user], query=spec.query, context=spec.context,
                                page_index=page_index, page_size=25)
            page = pl.search_with_info(req, fp16_rows=fp16_rows)[0]
            ref = _reference_items(pl, req, fp16_rows)
            assert len(page.items) == len(ref)
            for a, b in zip(page.items, ref, strict=True):
                _same_item(a, b)
                n += 1
            a.attrs["x"] = 1  # every item has its own attrs dict
            assert all(x.attrs == {} for x in page.items[:-1])
    assert n > 300


def test_page_item_fields_are_the_ones_page_items_writes():
    """If PageItem gains a field, page_items falls back to its constructor (and this says so)."""
    assert pipeline_mod._PAGE_ITEM_DIRECT, "PageItem's fields changed: update pipeline._PAGE_ITEM_FIELDS"


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint64])
def test_one_array_key_draws_are_the_scalar_stream(dtype):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 1 << 31, (4, 9)).astype(dtype)
    got = crn_uniform_array(987654321, 102, keys)
    want = [[crn_uniform(987654321, 102, int(k)) for k in row] for row in keys]
    assert got.shape == (4, 9) and got.tolist() == want
    neg = np.array([-1, -7, (1 << 62) + 5], dtype=np.int64)
    assert crn_uniform_array(5, neg).tolist() == [crn_uniform(5, int(k)) for k in neg]
    assert float(crn_uniform_array(5, 1, np.array(9))) == crn_uniform(5, 1, 9)  # a 0-d key: the general path


@pytest.mark.parametrize("arm", ["cloud", "heuristic"])
def test_a_finished_session_leaves_no_cyclic_garbage(world, inproc_cloud, arm):
    from edge_rerank.simulator.arms import ArmSpec, build_arm
    from edge_rerank.simulator.user_model import UserModel

    um = UserModel(world)
    phone = build_arm(ArmSpec(arm, arm), um).phone(um, inproc_cloud, keep_logs=arm != "cloud")
    phone.run(world.session(0, 31))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(5):
            assert phone.run(world.session(i, 31)).screens > 0
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not left, f"a finished session left reference cycles: {sorted(set(left))[:10]}"

"""A/B arms: the sanity ordering oracle > cloud-only > random order on QV_CTR with confidence intervals,
position-CTR decay by position and by screen, and identical results across transports."""

import numpy as np
import pytest

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.serve import running_server
from edge_rerank.device_sdk.contracts import SearchRequest
from edge_rerank.simulator.ab import paired_delta, run_ab
from edge_rerank.simulator.arms import ArmSpec, build_arm, parse_arms
from edge_rerank.simulator.phone import Phone
from edge_rerank.simulator.session_metrics import position_ctr, session_table
from edge_rerank.simulator.transport import HttpCloud, InProcessCloud
from edge_rerank.simulator.user_model import UserModel


@pytest.fixture(scope="module")
def sanity(world, cloud_data):
    um = UserModel(world)
    cloud = InProcessCloud(str(cloud_data), wire=False)
    arms = [build_arm(s, um) for s in parse_arms("cloud,random,oracle")]
    return {r.name: r for r in run_ab(um, cloud, arms, 1000, seed=3, progress=False)}


def test_sanity_ordering_oracle_beats_cloud_beats_random_with_cis(sanity):
    cloud, rnd, oracle = sanity["cloud"], sanity["random"], sanity["oracle"]
    up = paired_delta(cloud, oracle, "qv_ctr")
    down = paired_delta(cloud, rnd, "qv_ctr")
    assert up.lo > 0, f"oracle - cloud QV_CTR {up}"
    assert down.hi < 0, f"random - cloud QV_CTR {down}"
    assert oracle.metrics["qv_ctr"].mean > cloud.metrics["qv_ctr"].mean > rnd.metrics["qv_ctr"].mean
    assert paired_delta(cloud, oracle, "clicks").lo > 0


def test_position_ctr_decays_with_position_and_screen(sanity):
    ctr, exp = position_ctr(sanity["cloud"].outcomes, 24)
    per_screen = [np.nansum(ctr[s * 4:(s + 1) * 4] * exp[s * 4:(s + 1) * 4]) / exp[s * 4:(s + 1) * 4].sum()
                  for s in range(6)]
    assert per_screen[0] > per_screen[2] > per_screen[5], per_screen
    assert np.nanmean(ctr[:4]) > np.nanmean(ctr[12:24])
    # random order has no position signal left but the user's own examination decay
    r_ctr, _ = position_ctr(sanity["random"].outcomes, 24)
    assert np.nanmean(ctr[:4]) - np.nanmean(ctr[12:24]) > np.nanmean(r_ctr[:4]) - np.nanmean(r_ctr[12:24])


def test_arm_specs_validate():
    with pytest.raises(ValueError, match="unknown arm kind"):
        parse_arms("cloud,magic")
    with pytest.raises(ValueError, match="needs a bundle"):
        ArmSpec("device", "device")
    with pytest.raises(ValueError, match="unique"):
        parse_arms("cloud,cloud")
    variants = parse_arms("cloud,device=runs/a/bundle,device=runs/b/bundle")
    assert [s.name for s in variants] == ["cloud", "device:a", "device:b"]
    assert variants[2].bundle == "runs/b/bundle"


def test_fast_in_process_transport_gives_identical_pages_and_sessions(world, cloud_data, inproc_cloud):
    fast = InProcessCloud(str(cloud_data), wire=False)
    for i in range(30):
        spec = world.session(i, 8)
        for page in range(3):
            req = SearchRequest(f"r{i}", spec.session_id, world.user_ids[spec.user], spec.query, spec.context,
                                page_index=page)
            a, b = inproc_cloud.search(req), fast.search(req)
            assert [x.item_id for x in a.items] == [x.item_id for x in b.items] and a.has_more == b.has_more
            for x, y in zip(a.items, b.items, strict=True):
                assert np.array_equal(x.id_embedding, y.id_embedding) and np.array_equal(x.cloud_dense, y.cloud_dense)
                assert x.cloud_score == y.cloud_score


def test_http_and_in_process_sessions_are_identical(world, cloud_data):
    um = UserModel(world)
    with running_server(CloudConfig(data_dir=str(cloud_data))) as url:
        http = HttpCloud(url)
        arms = [build_arm(s, um) for s in parse_arms("cloud,heuristic")]
        a = run_ab(um, http, arms, 40, seed=12, progress=False)
        http.close()
    b = run_ab(um, InProcessCloud(str(cloud_data), wire=False), arms, 40, seed=12, progress=False)
    for x, y in zip(a, b, strict=True):
        tx, ty = session_table(x.outcomes), session_table(y.outcomes)
        assert all(np.array_equal(tx[k], ty[k]) for k in tx)
        assert [o.click_positions for o in x.outcomes] == [o.click_positions for o in y.outcomes]


def test_logging_does_not_change_the_session(world, inproc_cloud):
    """The lean path (no logger, no reranker) and the full path give the same user behaviour and triggers."""
    um = UserModel(world)
    lean, full = Phone(um, inproc_cloud, arm="c", keep_logs=False), Phone(um, inproc_cloud, arm="c", keep_logs=True)
    for i in range(40):
        a, b = lean.run(world.session(i, 2)), full.run(world.session(i, 2))
        assert (a.clicks, a.orders, a.screens, a.triggers, a.exposed_positions) == \
               (b.clicks, b.orders, b.screens, b.triggers, b.exposed_positions)
        assert b.rows and not a.rows

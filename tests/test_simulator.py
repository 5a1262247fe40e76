import numpy as np

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.serve import running_server
from edge_rerank.device_sdk.contracts import SearchRequest
from edge_rerank.simulator.phone import Phone
from edge_rerank.simulator.randomness import crn_uniform
from edge_rerank.simulator.session_metrics import bootstrap_mean, position_ctr
from edge_rerank.simulator.transport import HttpCloud
from edge_rerank.simulator.user_model import UserModel


def test_sessions_are_deterministic_and_independent_of_order(world):
    a = world.session(5, 3)
    b = world.session(5, 3)
    assert a.session_id == b.session_id and a.user == b.user and np.array_equal(a.intent_z, b.intent_z)
    assert world.session(6, 3).session_id != a.session_id


def test_crn_uniform_is_uniform_and_keyed():
    u = np.array([crn_uniform(1, 2, k) for k in range(20000)])
    assert 0.49 < u.mean() < 0.51 and u.min() >= 0 and u.max() < 1
    assert crn_uniform(1, 2, 3) == crn_uniform(1, 2, 3) != crn_uniform(1, 2, 4)


def test_phone_session_replays_identically(world, inproc_cloud):
    phone = Phone(UserModel(world), inproc_cloud, arm="cloud")
    spec = world.session(1, 9)
    a, b = phone.run(spec), phone.run(spec)
    assert (a.clicks, a.screens, a.exposed_positions, a.click_positions) == \
           (b.clicks, b.screens, b.exposed_positions, b.click_positions)


def test_position_ctr_decays_and_bootstrap_covers_the_mean(world, inproc_cloud):
    phone = Phone(UserModel(world), inproc_cloud, arm="cloud", keep_logs=False)
    outs = [phone.run(world.session(i, 21)) for i in range(300)]
    ctr, exp = position_ctr(outs)
    assert np.all(np.diff(exp[:40]) <= 0)  # fewer sessions reach deeper positions
    assert np.nanmean(ctr[:8]) > np.nanmean(ctr[16:40])  # position bias: top results get clicked more
    est = bootstrap_mean(np.array([o.clicks > 0 for o in outs], float))
    assert est.lo < est.mean < est.hi and 0.3 < est.mean < 0.95


def test_http_and_in_process_transports_return_identical_pages(cloud_data, inproc_cloud, world):
    with running_server(CloudConfig(data_dir=str(cloud_data))) as url:
        http = HttpCloud(url)
        for i in range(5):
            spec = world.session(i, 4)
            req = SearchRequest(f"r{i}", spec.session_id, world.user_ids[spec.user], spec.query, spec.context,
                                page_index=i % 2)
            a, b = http.search(req), inproc_cloud.search(req)
            assert [x.item_id for x in a.items] == [x.item_id for x in b.items]
            assert all(np.array_equal(x.id_embedding, y.id_embedding) and x.cloud_score == y.cloud_score
                       for x, y in zip(a.items, b.items, strict=True))
        http.close()


def test_device_arm_reranks_only_unseen_items(world, inproc_cloud, bundle_dir):
    from edge_rerank.device_sdk.model_manager import load_model
    from edge_rerank.device_sdk.reranker import RerankService

    svc = RerankService(load_model(bundle_dir))
    phone = Phone(UserModel(world), inproc_cloud, arm="device", reranker=svc)
    outs = [phone.run(world.session(i, 33)) for i in range(60)]
    assert sum(o.reranks_applied for o in outs) > 0
    for o in outs:  # exposures are a prefix of the list, in order, with no position shown twice
        assert o.exposed_positions == list(range(len(o.exposed_positions)))
        for row in o.rows:
            shown = [c.shown_position for c in row.candidates if c.exposed]
            assert len(shown) == len(set(shown))

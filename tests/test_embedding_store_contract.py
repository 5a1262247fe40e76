"""One contract suite, run against every EmbeddingStore implementation: the file-backed memmap store and
Redis (a real redis-server on loopback, started here; skipped only if the binary is not installed)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.embedding_store import EmbeddingStore, FileEmbeddingStore, open_store
from edge_rerank.cloud.embedding_store.redis_server import redis_server_binary, running_redis

DIM = 8
RNG = np.random.default_rng(3)
# sparse ids (binary-search path) with negatives and large values
IDS = np.unique(RNG.integers(-(10**12), 10**12, size=500)).astype(np.int64)
ROWS = RNG.standard_normal((len(IDS), DIM)).astype(np.float32)
REF = {int(i): r for i, r in zip(IDS, ROWS, strict=True)}


@pytest.fixture(scope="module")
def redis_url():
    if redis_server_binary() is None:
        pytest.skip("redis-server binary not installed (make test / .ci/run install it with apt-get)")
    with running_redis() as url:
        yield url


@pytest.fixture(scope="module", params=["file", "redis"])
def store(request, tmp_path_factory) -> EmbeddingStore:
    if request.param == "file":
        data_dir = tmp_path_factory.mktemp("emb")
        FileEmbeddingStore.write(data_dir / "embeddings", IDS, ROWS)
        return open_store("file", data_dir=data_dir)
    url = request.getfixturevalue("redis_url")
    from edge_rerank.cloud.embedding_store import RedisEmbeddingStore

    RedisEmbeddingStore.write(url, IDS, ROWS, prefix="contract")
    return open_store("redis", data_dir="unused", redis_url=url, redis_prefix="contract")


def test_it_is_an_embedding_store(store):
    assert isinstance(store, EmbeddingStore)
    assert store.dim == DIM and len(store) == len(IDS)


def test_known_ids_return_their_exact_rows_in_request_order(store):
    pick = IDS[[5, 0, 499, 17, 5]]
    rows, found = store.get(pick)
    assert rows.dtype == np.float32 and rows.shape == (5, DIM) and found.dtype == bool
    assert found.all()
    np.testing.assert_array_equal(rows, np.stack([REF[int(i)] for i in pick]))


def test_unknown_ids_get_a_flagged_zero_row_never_an_error(store):
    unknown = np.array([IDS.max() + 1, IDS.min() - 1, 0 if 0 not in REF else 1, 2**62], dtype=np.int64)
    mixed = np.concatenate([unknown, IDS[:3]])
    rows, found = store.get(mixed)
    assert found.tolist() == [False] * 4 + [True] * 3
    assert not rows[:4].any()
    np.testing.assert_array_equal(rows[4:], ROWS[:3])


def test_empty_request(store):
    rows, found = store.get(np.empty(0, dtype=np.int64))
    assert rows.shape == (0, DIM) and found.shape == (0,)


def test_hits_and_misses_are_counted(store):
    h, m = store.hits, store.misses
    store.get(np.array([IDS[0], IDS.max() + 7], dtype=np.int64))
    assert (store.hits - h, store.misses - m) == (1, 1)


def test_large_batch(store):
    pick = np.resize(IDS, 20_000)
    rows, found = store.get(pick)
    assert found.all()
    np.testing.assert_array_equal(rows, np.resize(ROWS, (20_000, DIM)))


@settings(max_examples=60)
@given(st.lists(st.one_of(st.sampled_from(IDS.tolist()), st.integers(-(2**63), 2**63 - 1)), max_size=40))
def test_agrees_with_a_dict(store, ids):
    rows, found = store.get(np.array(ids, dtype=np.int64))
    for k, i in enumerate(ids):
        if i in REF:
            assert found[k]
            np.testing.assert_array_equal(rows[k], REF[i])
        else:
            assert not found[k] and not rows[k].any()


def test_dense_ids_use_the_direct_table_and_agree(tmp_path):
    ids = np.arange(1000, 3000, 2, dtype=np.int64)[::-1]  # even ids only: holes inside the table's range
    rows = RNG.standard_normal((1000, DIM)).astype(np.float32)
    FileEmbeddingStore.write(tmp_path, ids, rows)
    s = FileEmbeddingStore(tmp_path)
    assert s._table is not None
    q = np.array([999, 1000, 2998, 3000, 1500, 1501], dtype=np.int64)
    got, found = s.get(q)
    assert found.tolist() == [False, True, True, False, True, False]
    np.testing.assert_array_equal(got[1], rows[ids == 1000][0])
    np.testing.assert_array_equal(got[4], rows[ids == 1500][0])
    assert not got[[0, 3, 5]].any()
    inside, found_inside = s.get(np.array([1501, 1502], dtype=np.int64))  # all inside the range, one hole
    assert found_inside.tolist() == [False, True] and not inside[0].any()


def test_write_rejects_duplicates_and_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        FileEmbeddingStore.write(tmp_path, np.array([1, 1]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not match"):
        FileEmbeddingStore.write(tmp_path, np.array([1, 2]), np.zeros((3, 3)))


def test_unknown_store_kind_and_missing_redis_table_are_clear_errors(redis_url):
    with pytest.raises(ValueError, match="unknown embedding store"):
        open_store("cassandra", data_dir=".")
    with pytest.raises(ValueError, match="redis_url"):
        open_store("redis", data_dir=".")
    with pytest.raises(ValueError, match="no embedding table"):
        open_store("redis", data_dir=".", redis_url=redis_url, redis_prefix="nothing-here")


def test_the_app_serves_identical_pages_from_redis(cloud_data, redis_url):
    from edge_rerank.cloud.app import CloudConfig, create_app
    from edge_rerank.cloud.embedding_store import RedisEmbeddingStore

    ids, rows = FileEmbeddingStore(cloud_data / "embeddings").table()
    RedisEmbeddingStore.write(redis_url, ids, np.asarray(rows), prefix="app")
    body = {"request_id": "r", "user_id": "u00002", "query": "hotpot", "page_size": 30}
    pages = []
    for kw in ({}, {"embedding_store": "redis", "redis_url": redis_url, "redis_prefix": "app"}):
        app = create_app(CloudConfig(data_dir=str(cloud_data), **kw))
        r = app.test_client().post("/v1/search", json=body, headers={"Accept": "application/json"})
        assert r.status_code == 200
        pages.append(r.get_json())
    assert pages[0] == pages[1] and len(pages[0]["items"]) == 30

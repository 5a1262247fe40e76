"""Shared fixtures: a small seeded world, its cloud data, logs from cloud-only sessions, a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features import FeatureConfig
from edge_rerank.simulator.world import World, WorldConfig

# deterministic property tests: the same examples on every run and machine
settings.register_profile("edge-rerank", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("edge-rerank")

WCFG = WorldConfig(seed=7, n_items=600, n_users=80)


@pytest.fixture(scope="session")
def world() -> World:
    return World(WCFG)


@pytest.fixture(scope="session")
def fcfg() -> FeatureConfig:
    return FeatureConfig(emb_dim=WCFG.emb_dim, dense_dim=WCFG.dense_dim, n_categories=WCFG.n_categories,
                         n_brands=WCFG.n_brands)


@pytest.fixture(scope="session")
def cloud_data(world, tmp_path_factory) -> Path:
    return world.provision_cloud(tmp_path_factory.mktemp("cloud_data"))


@pytest.fixture(scope="session")
def inproc_cloud(cloud_data):
    from edge_rerank.simulator.transport import InProcessCloud

    return InProcessCloud(str(cloud_data))


@pytest.fixture(scope="session")
def logged_rows(world, inproc_cloud):
    """Impression rows from 600 cloud-only sessions (through the device SDK's logger)."""
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.user_model import UserModel

    phone = Phone(UserModel(world), inproc_cloud, arm="cloud")
    rows = []
    for i in range(600):
        rows.extend(phone.run(world.session(i, 11)).rows)
    return rows


@pytest.fixture(scope="session")
def samples(logged_rows, fcfg):
    from edge_rerank.cloud.training.data import build_samples

    return build_samples(logged_rows, fcfg, progress=False)


@pytest.fixture(scope="session")
def split_parts(samples):
    """(recorded split, train, valid, test): the seed-0 three-way split by session the `trained` model used."""
    from edge_rerank.cloud.training.data import split_sessions

    return split_sessions(samples)


@pytest.fixture(scope="session")
def trained(split_parts, fcfg):
    """(model, summary, test lists): epochs chosen on the validation lists, the test lists never seen."""
    from edge_rerank.cloud.training.train import TrainConfig, fit

    _, train, valid, test = split_parts
    model, summary = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=4, threads=1), test=test, progress=False)
    return model, summary, test


@pytest.fixture(scope="session")
def bundle_dir(trained, tmp_path_factory) -> Path:
    from edge_rerank.pipeline import export_bundle

    model, summary, test = trained
    out = tmp_path_factory.mktemp("export")
    bundle, _ = export_bundle(model, test, out, version="test", n_validate=20, metrics=summary["test_model"])
    return bundle


def make_item(item_id: int, rng: np.random.Generator, fcfg: FeatureConfig, position: int = 0) -> PageItem:
    return PageItem(item_id=item_id, cloud_position=position, cloud_score=float(rng.normal()),
                    cloud_dense=rng.normal(size=fcfg.dense_dim).astype(np.float32),
                    id_embedding=rng.normal(size=fcfg.emb_dim).astype(np.float32),
                    category=int(rng.integers(0, 12)), brand=int(rng.integers(0, 48)),
                    price_level=int(rng.integers(0, 5)), lat=float(rng.uniform(0, 10)), lon=float(rng.uniform(0, 10)))


def make_events(items: list[PageItem], clicks: set[int], dwell_ms: float = 2000.0) -> list[FeedbackEvent]:
    ev = []
    for pos, it in enumerate(items):
        if it.item_id in clicks:
            ev.append(FeedbackEvent.for_item(it, EventKind.CLICK, 1000 * pos, "r", pos))
            ev.append(FeedbackEvent.for_item(it, EventKind.DETAIL_RETURN, 1000 * pos + 500, "r", pos, 9000))
        ev.append(FeedbackEvent.for_item(it, EventKind.EXPOSURE, 1000 * pos + 900, "r", pos, dwell_ms))
    return ev


CTX = Context(lat=5.0, lon=5.0, hour=19)


class ScriptedSession:
    """A device session driven by a (hypothesis-drawn) list of steps, for feature tests that compare two build
    paths after every step: ``events`` (k items of the window are seen, ~40 % clicked, stored; the window moves on),
    ``page`` (a page of new items arrives), ``shift`` (the window moves on), ``reorder`` (the unseen tail is
    shuffled), ``new_object`` (an item comes back as another object with other values), ``clear`` (the store is
    cleared), ``context`` (the search location moves); anything else changes nothing."""

    def __init__(self, cfg: FeatureConfig, rng: np.random.Generator, store, *, n_page: int, dwell: float,
                 ctx: Context, session: str = "s"):
        self.cfg, self.rng, self.store, self.n_page, self.dwell, self.ctx, self.session = (
            cfg, rng, store, n_page, dwell, ctx, session)
        self.items = [make_item(k, rng, cfg, k) for k in range(n_page)]
        self.n_fixed, self.next_id, self.t = 0, n_page, 0

    @property
    def window(self) -> list[PageItem]:
        return self.items[self.n_fixed: self.n_fixed + self.cfg.n_max]

    def step(self, what: str, k: int) -> None:
        items, rng = self.items, self.rng
        if what == "events":
            seen = items[self.n_fixed: self.n_fixed + k] or items[-k:]
            evs = make_events(seen, {it.item_id for it in seen if rng.random() < 0.4}, self.dwell)
            for e in evs:
                e.ts_ms += self.t
            self.t += 10_000
            self.store.add_many(self.session, evs)
            self.n_fixed = min(len(items), self.n_fixed + k)
        elif what == "page":
            items += [make_item(self.next_id + j, rng, self.cfg, self.next_id + j) for j in range(self.n_page)]
            self.next_id += self.n_page
        elif what == "shift":
            self.n_fixed = min(len(items), self.n_fixed + k)
        elif what == "reorder":
            tail = items[self.n_fixed:]
            rng.shuffle(tail)
            items[self.n_fixed:] = tail
        elif what == "new_object" and items:  # the same item id, another object with other values
            j = int(rng.integers(0, len(items)))
            items[j] = make_item(items[j].item_id, rng, self.cfg, j)
        elif what == "clear":
            self.store.clear()
        elif what == "context":
            self.ctx = Context(float(rng.uniform(0, 10)), float(rng.uniform(0, 10)), int(rng.integers(0, 24)))


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray cluster for one test module (the Ray tests skip without the ray extra)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # a sandbox without shared memory, ports or processes
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


class _OpaqueRanker:
    """A cloud fine ranker behind the plain protocol only (features + forward): the search pipeline takes none of
    its numpy-ranker shortcuts (per-recall-set base, lazy hidden layer), so it is the eager reference to compare
    them with."""

    def __init__(self, r):
        self.r, self.dense_dim = r, r.dense_dim

    def features(self, **kw):
        return self.r.features(**kw)

    def forward(self, x):
        return self.r.forward(x)


@pytest.fixture(scope="session")
def opaque_ranker():
    """Wraps a ranker so the search pipeline cannot take a shortcut (see ``_OpaqueRanker``)."""
    return _OpaqueRanker

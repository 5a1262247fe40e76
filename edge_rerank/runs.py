"""The run skeleton the ablation, the benches and the tests start from: provision a simulated world's cloud, log
cloud-only sessions in process, build the device samples and split them by session.

The demo (``pipeline.run_demo``) does the same steps the way a deployment would (gunicorn, impression logs uploaded
over HTTP to Parquet, ``api.train`` on the log directory), so it only shares the world and the session seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from edge_rerank.cloud.training.data import Samples, SessionSplit, SplitConfig, build_samples, split_sessions
from edge_rerank.device_sdk.contracts import ImpressionRow
from edge_rerank.device_sdk.features import FeatureConfig
from edge_rerank.simulator.phone import Phone
from edge_rerank.simulator.transport import InProcessCloud
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World


@dataclass
class LoggedWorld:
    """A provisioned world's cloud and the impression-log rows of its cloud-only sessions."""

    data_dir: Path
    cloud: InProcessCloud
    rows: list[ImpressionRow]


def simulate_cloud_only(world: World, cloud, n_sessions: int, seed: int, *, progress: bool = True
                        ) -> list[ImpressionRow]:
    """The rows of sessions ``world.session(i, seed)``, i < `n_sessions`, served in cloud order by `cloud`."""
    phone = Phone(UserModel(world), cloud, arm="cloud")
    rows: list[ImpressionRow] = []
    for i in tqdm(range(n_sessions), desc="simulate logs", unit="session", disable=not progress, leave=False):
        rows.extend(phone.run(world.session(i, seed)).rows)
    return rows


def logged_world(world: World, data_dir: str | Path, n_sessions: int, seed: int, *, wire: bool = True,
                 progress: bool = True) -> LoggedWorld:
    """Provision `world`'s cloud into `data_dir`, serve it in process and log `n_sessions` cloud-only sessions."""
    data = world.provision_cloud(data_dir)
    cloud = InProcessCloud(str(data), wire=wire)
    return LoggedWorld(data, cloud, simulate_cloud_only(world, cloud, n_sessions, seed, progress=progress))


def split_samples(rows: Sequence[ImpressionRow], fcfg: FeatureConfig, split: SplitConfig | None = None, *,
                  progress: bool = True) -> tuple[SessionSplit, Samples, Samples, Samples]:
    """The samples of `rows` under `fcfg`, split by session: (split record, train, valid, test)."""
    return split_sessions(build_samples(rows, fcfg, progress=progress), split or SplitConfig())

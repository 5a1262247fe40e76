"""The A/B arms: cloud-only, random order, the click/skip heuristic, an oracle that knows the hidden intent,
and the device reranker from a bundle. Each is described by an :class:`ArmSpec` (plain data, so Ray workers
can rebuild it) and built into an :class:`simulator.ab.Arm` by :func:`build_arm`.

- ``cloud``: the cloud order, never reranked (the baseline).
- ``random``: every page shown in a random order (seeded per session): what no ranking at all looks like.
- ``heuristic``: ``device_sdk.heuristic.HeuristicReranker`` on the default triggers.
- ``oracle``: sorts unseen items by the user's true utility under the hidden intent on every page
  arrival: an upper bound no real reranker can reach (it does not know the luck of the draws).
- ``device``: the bundle's model through ``device_sdk.model_manager`` + ``RerankService``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.budgets import CostModel
from edge_rerank.device_sdk.contracts import Context, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.heuristic import HeuristicReranker
from edge_rerank.device_sdk.reranker import RerankResult, reinsert
from edge_rerank.device_sdk.triggers import TriggerConfig
from edge_rerank.simulator.randomness import SHUFFLE, crn_uniform_array
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import SessionSpec

ARM_KINDS = ("cloud", "random", "heuristic", "oracle", "device")
PAGE_ONLY = TriggerConfig(click_return=False, skip_run=0, page_arrival=True, page_arrival_always=True)


class OracleReranker:
    """Knows the session's hidden intent: scores unseen items by the user's utility for them."""

    name = "oracle"

    def __init__(self, user_model: UserModel, features: FeatureConfig | None = None):
        self.um = user_model
        self.features = features or FeatureConfig()  # its window is the device model's N_max
        self._spec: SessionSpec | None = None

    def begin_session(self, spec: SessionSpec) -> None:
        self._spec = spec

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        if self._spec is None:
            raise RuntimeError("OracleReranker.begin_session(spec) must be called first")
        n = len(items)
        window = items[n_fixed: n_fixed + self.features.n_max]
        if len(window) < 2:
            return RerankResult(order=list(range(n)), applied=False, fallback_reason="nothing_to_rerank")
        rows = np.array([it.item_id for it in window], dtype=np.int64) - self.um.world.item_id[0]
        order = reinsert(n, n_fixed, self.features.n_max, self.um.utility(self._spec, rows))
        return RerankResult(order=order, applied=True, moved=sum(p != i for p, i in enumerate(order)))


class RandomReranker:
    """Shows unseen items in a random order, seeded by (session, call): identical across runs and workers."""

    name = "random"

    def __init__(self, features: FeatureConfig | None = None):
        self.features = features or FeatureConfig()
        self._seed, self._calls = 0, 0

    def begin_session(self, spec: SessionSpec) -> None:
        self._seed, self._calls = spec.seed, 0

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        n = len(items)
        w = min(self.features.n_max, n - n_fixed)
        self._calls += 1
        if w < 2:
            return RerankResult(order=list(range(n)), applied=False, fallback_reason="nothing_to_rerank")
        scores = crn_uniform_array(self._seed, SHUFFLE, self._calls, np.arange(w))
        order = reinsert(n, n_fixed, self.features.n_max, scores)
        return RerankResult(order=order, applied=True, moved=sum(p != i for p, i in enumerate(order)))


@dataclass(frozen=True)
class ArmSpec:
    """Plain-data description of an arm (what Ray workers receive)."""

    name: str
    kind: str
    bundle: str | None = None
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.kind not in ARM_KINDS:
            raise ValueError(f"unknown arm kind {self.kind!r}; choose from {ARM_KINDS}")
        if self.kind == "device" and not self.bundle:
            raise ValueError("a 'device' arm needs a bundle directory")


def parse_arms(text: str, bundle: str | None = None, backend: str = "onnxruntime") -> list[ArmSpec]:
    """'cloud,random,oracle' -> ArmSpecs. 'device' uses `bundle`; 'device=DIR' names another bundle (device
    reranker variants: 'cloud,device=runs/a/bundle,device=runs/b/bundle'), the arm named 'device:<a>'."""
    specs = []
    for entry in (k.strip() for k in text.split(",")):
        if not entry:
            continue
        kind, _, path = entry.partition("=")
        if path:
            if kind != "device":
                raise ValueError(f"only device arms take a bundle path, got {entry!r}")
            p = Path(path)
            # OUT/<format>/ (the exporters' layout) or OUT/bundle/: name the arm after OUT
            generic = p.name in ("bundle", "onnx", "tflite", "mnn", "coreml", "numpy", "lightgbm")
            label = p.parent.name if generic and p.parent.name else p.name
            specs.append(ArmSpec(name=f"device:{label}", kind="device", bundle=path, backend=backend))
        else:
            specs.append(ArmSpec(name=kind, kind=kind, bundle=bundle if kind == "device" else None, backend=backend))
    if not specs:
        raise ValueError("no arms given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    return specs


def build_arm(spec: ArmSpec, user_model: UserModel):
    """ArmSpec -> simulator.ab.Arm (loads the bundle for a device arm)."""
    from edge_rerank.simulator.ab import Arm

    if spec.kind == "cloud":
        return Arm(spec.name)
    if spec.kind == "random":
        return Arm(spec.name, RandomReranker(), triggers=PAGE_ONLY, cost_model=CostModel.for_heuristic())
    if spec.kind == "oracle":
        return Arm(spec.name, OracleReranker(user_model), triggers=PAGE_ONLY, cost_model=CostModel.for_heuristic())
    if spec.kind == "heuristic":
        return Arm(spec.name, HeuristicReranker(), cost_model=CostModel.for_heuristic())
    from edge_rerank.device_sdk.model_manager import load_model
    from edge_rerank.device_sdk.reranker import RerankService

    model = load_model(spec.bundle, backend=spec.backend)
    # cost model derived from the bundle's parameter count, see ab.Arm; the latency budget is the session's, on the
    # *modelled* device latency (a gate on this machine's wall clock would make results depend on its load)
    return Arm(spec.name, RerankService(model))


def bundle_exists(path: str | None) -> bool:
    return bool(path) and (Path(path) / "manifest.json").exists()

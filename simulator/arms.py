"""The A/B arms: cloud-only, random order, the click/skip heuristic, an oracle that knows the hidden intent,
and the device reranker from a bundle. Each is described by an :class:`ArmSpec` (plain data, so Ray workers
can rebuild it) and built into an :class:`simulator.ab.Arm` by :func:`build_arm`.

- ``cloud``: the cloud order, never reranked (the baseline).
- ``random``: every page shown in a random order (seeded per session): what no ranking at all looks like.
- ``heuristic``: ``device_sdk.heuristic.HeuristicReranker`` on the default triggers.
- ``oracle``: sorts unseen items by the user's true utility under the hidden intent on every page
  arrival: an upper bound no real reranker can reach (it does not know the luck of the draws).
- ``informed``: knows the user model but not the intent, and sees only the feedback the device saw: a
  posterior over a finite (feed) or discretised (shop) intent space given the session's events, unseen items
  scored by their expected click probability under it, at the device's decision points (the SDK's default
  triggers: only once there is feedback): the best any device model could do with that feedback.
- ``informed_any``: the same, also reordering pages that arrive before any feedback (every page arrival): what
  knowing the user model is worth on its own — a better cloud ranker, not feedback use.
- ``device``: the bundle's model through ``device_sdk.model_manager`` + ``RerankService``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.budgets import CostModel
from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.heuristic import HeuristicReranker
from edge_rerank.device_sdk.reranker import RerankResult, reinsert
from edge_rerank.device_sdk.triggers import TriggerConfig
from edge_rerank.simulator.randomness import SHUFFLE, crn_uniform_array
from edge_rerank.simulator.user_model import IntentHypotheses, UserModel
from edge_rerank.simulator.world import SessionSpec

ARM_KINDS = ("cloud", "random", "heuristic", "oracle", "device", "informed", "informed_any")
PAGE_ONLY = TriggerConfig(click_return=False, skip_run=0, page_arrival=True, page_arrival_always=True)
INFORMED_TRIGGERS = TriggerConfig()  # the device arm's decision points (the SDK defaults)
INFORMED_ANY_TRIGGERS = TriggerConfig(page_arrival_always=True)  # + pages with no feedback yet


class _SeenState:
    """What the device's events say about the user's state: per item, how often it was (expectedly) examined and
    whether it was clicked; per saturation key (brand / topic), the expected examined count; the clicks."""

    def __init__(self) -> None:
        self.n_done = 0
        self.item_exam: dict[int, float] = {}
        self.key_exam: dict[int, float] = {}
        self.clicked: set[int] = set()
        self.clicks = 0
        self.pending_click: set[int] = set()  # clicked since the item's last exposure event


def _key_of(um: UserModel, ev: FeedbackEvent) -> int:
    return um.saturation_key(ev)  # type: ignore[arg-type] - events carry the item's category and brand


def _p_examined(um: UserModel, ev: FeedbackEvent, dwell_threshold_ms: float) -> float:
    """P(examined) of an unclicked exposure given what the device sees: a long dwell is a read screen, a short
    one mostly a flicked one (docs/simulator.md, "real negatives vs noise")."""
    screen = max(ev.position, 0) // um.cfg.viewport_items
    return um.p_examine(screen, skim=ev.dwell_ms < dwell_threshold_ms)


def _penalties(um: UserModel, st: _SeenState, items: Sequence[PageItem] | Sequence[FeedbackEvent]) -> np.ndarray:
    return np.array([um.saturation(st.key_exam.get(um.saturation_key(it), 0.0))  # type: ignore[arg-type]
                     + um.reshow_penalty(st.item_exam.get(it.item_id, 0.0), it.item_id in st.clicked)
                     for it in items])


class InformedReranker:
    """The informed oracle: the user model without the hidden intent. ``posterior`` is the current posterior over
    ``hypotheses`` (updated from the session's events on every rerank)."""

    name = "informed"

    def __init__(self, user_model: UserModel, features: FeatureConfig | None = None):
        self.um = user_model
        self.features = features or FeatureConfig()
        self.hypotheses: IntentHypotheses | None = None
        self.log_post = np.zeros(0)
        self._st = _SeenState()

    @property
    def posterior(self) -> np.ndarray:
        p = np.exp(self.log_post - self.log_post.max())
        return p / p.sum()

    def begin_session(self, spec: SessionSpec) -> None:
        self.hypotheses = self.um.intent_hypotheses(spec)
        self.log_post = self.hypotheses.log_prior.astype(np.float64).copy()
        self._st = _SeenState()

    def _p_click(self, utility: np.ndarray, clicks: int) -> np.ndarray:
        c = self.um.cfg
        thr = c.click_threshold + c.satiation_per_click * clicks
        return 1.0 / (1.0 + np.exp(np.clip(-c.click_slope * (utility - thr), -700, 700)))

    def observe(self, events: Sequence[FeedbackEvent]) -> None:
        """Bayes update with the events not seen yet: each exposure is a click (likelihood p_click) or not
        (1 − P(examined | dwell)·p_click) under every hypothesis; penalties (saturation, re-shows) as the user's
        state implies them."""
        assert self.hypotheses is not None
        st, um = self._st, self.um
        new = list(events[st.n_done:])
        st.n_done = len(events)
        expo = [ev for ev in new if ev.kind == EventKind.EXPOSURE and ev.item_id >= 0]
        util = {}
        if expo:
            ids = np.unique(np.array([ev.item_id for ev in expo], dtype=np.int64))
            U = self.hypotheses.utility(ids - um.world.item_id[0])  # [H, n]
            util = {int(i): U[:, k] for k, i in enumerate(ids)}
        thr_ms = self.features.dwell_threshold_ms
        for ev in new:
            if ev.kind == EventKind.CLICK:
                st.pending_click.add(ev.item_id)
                continue
            if ev.kind != EventKind.EXPOSURE or ev.item_id < 0:
                continue
            clicked = ev.item_id in st.pending_click
            pen = _penalties(um, st, [ev])[0]
            clicks_before = st.clicks
            if clicked:
                st.pending_click.discard(ev.item_id)
                st.clicks += 1
            p = self._p_click(util[ev.item_id] - pen, clicks_before)
            e = 1.0 if clicked else _p_examined(um, ev, thr_ms)
            self.log_post += np.log(np.maximum(p if clicked else 1.0 - e * p, 1e-300))
            key = _key_of(um, ev)
            st.key_exam[key] = st.key_exam.get(key, 0.0) + e
            st.item_exam[ev.item_id] = st.item_exam.get(ev.item_id, 0.0) + e
            if clicked:
                st.clicked.add(ev.item_id)
        self.log_post -= self.log_post.max()

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        if self.hypotheses is None:
            raise RuntimeError("InformedReranker.begin_session(spec) must be called first")
        self.observe(events)
        n = len(items)
        window = items[n_fixed: n_fixed + self.features.n_max]
        if len(window) < 2:
            return RerankResult(order=list(range(n)), applied=False, fallback_reason="nothing_to_rerank")
        rows = np.array([it.item_id for it in window], dtype=np.int64) - self.um.world.item_id[0]
        U = self.hypotheses.utility(rows) - _penalties(self.um, self._st, window)[None, :]
        scores = self.posterior @ self._p_click(U, self._st.clicks)
        order = reinsert(n, n_fixed, self.features.n_max, scores)
        return RerankResult(order=order, applied=True, moved=sum(p != i for p, i in enumerate(order)))


class _ItemHistory:
    """Per item: expected examinations and clicks, from the device's events (what a re-shown item carries)."""

    def __init__(self, um: UserModel, dwell_threshold_ms: float):
        self.um, self.thr = um, dwell_threshold_ms
        self.n_done = 0
        self.exam: dict[int, float] = {}
        self.clicked: set[int] = set()

    def observe(self, events: Sequence[FeedbackEvent]) -> None:
        for ev in events[self.n_done:]:
            if ev.kind == EventKind.CLICK:
                self.clicked.add(ev.item_id)
            elif ev.kind == EventKind.EXPOSURE and ev.item_id >= 0:
                e = 1.0 if ev.item_id in self.clicked else _p_examined(self.um, ev, self.thr)
                self.exam[ev.item_id] = self.exam.get(ev.item_id, 0.0) + e
        self.n_done = len(events)


class OracleReranker:
    """Knows the session's hidden intent: scores unseen items by the user's utility for them."""

    name = "oracle"

    def __init__(self, user_model: UserModel, features: FeatureConfig | None = None):
        self.um = user_model
        self.features = features or FeatureConfig()  # its window is the device model's N_max
        self._spec: SessionSpec | None = None

    def begin_session(self, spec: SessionSpec) -> None:
        self._spec = spec
        self._seen = _ItemHistory(self.um, self.features.dwell_threshold_ms)

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        if self._spec is None:
            raise RuntimeError("OracleReranker.begin_session(spec) must be called first")
        n = len(items)
        window = items[n_fixed: n_fixed + self.features.n_max]
        if len(window) < 2:
            return RerankResult(order=list(range(n)), applied=False, fallback_reason="nothing_to_rerank")
        rows = np.array([it.item_id for it in window], dtype=np.int64) - self.um.world.item_id[0]
        scores = self.um.utility(self._spec, rows)
        if self.um.world.reshows_items:  # an item shown again: what the user already did with it lowers it
            self._seen.observe(events)
            scores = scores - np.array([self.um.reshow_penalty(self._seen.exam.get(it.item_id, 0.0),
                                                               it.item_id in self._seen.clicked) for it in window])
        order = reinsert(n, n_fixed, self.features.n_max, scores)
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
    if spec.kind in ("informed", "informed_any"):
        return Arm(spec.name, InformedReranker(user_model),
                   triggers=INFORMED_TRIGGERS if spec.kind == "informed" else INFORMED_ANY_TRIGGERS,
                   cost_model=CostModel.for_heuristic())
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

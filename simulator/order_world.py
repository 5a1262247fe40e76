"""The order-aware world (issue 17): users whose *orders* follow other rules than their clicks, so that fusing a
click model with an order model is a real decision.

The default user (``simulator.user_model.UserModel``) orders with a probability that is a function of the same
utility that drives clicks, so an order model would learn nothing a click model does not. Here every session has
a hidden **purpose**, drawn per session from a per-user trait and the hour (meal times raise it):

- a **buyer** session wants to order now: its clicks and even more its orders weigh distance (to the intended
  area) and price fit; it orders often (``order_max_buyer``) and, as everywhere, often leaves after ordering;
- a **browser** session looks around: its clicks weigh quality and popularity; it rarely orders.

What the cloud can see of the purpose: the hour (context) and the user's earlier sessions (their clicks and
orders, from opt-in impression logs). The cloud's click model (P(click | exposed)) and order model
(P(order | click)) then rank differently, and the best trade-off between them differs per session: the RL
fusion policy's job.

Nothing here changes the default world: ``UserModel`` keeps its outcomes (``p_order_item`` defaults to
``p_order(utility)``); this model is used only when asked for (``OrderAwareUserModel(world)``, ``--order-world``).
All draws are keyed (common random numbers): the purpose by (session seed, PURPOSE), the trait by (world seed,
TRAIT, user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_rerank.simulator.randomness import crn_uniform
from edge_rerank.simulator.user_model import UserModel, UserModelConfig, UserState
from edge_rerank.simulator.world import SessionSpec, World

PURPOSE, TRAIT = 201, 202  # purposes of this module's draws (outside randomness.py's range)
MEAL_HOURS = frozenset({11, 12, 13, 17, 18, 19, 20})


@dataclass(frozen=True)
class OrderWorldConfig:
    """How buyers and browsers differ (documented in docs/simulator.md's order-aware section)."""

    buyer_share: float = 0.35  # mean probability that a session is a buyer's (before the hour)
    trait_spread: float = 0.8  # per-user trait: buyer probability += spread * (trait - 0.5), trait ~ U(0, 1)
    meal_bonus: float = 0.25  # added at meal hours (11-13, 17-20), subtracted otherwise (half of it)
    buyer_w_dist: float = 0.12  # buyers' clicks: extra utility lost per km from the intended area
    buyer_w_price: float = 0.35  # ... and per price level away from the intended price
    browser_w_quality: float = 1.0  # browsers' clicks: extra weight of quality (centred at 0.5)
    browser_w_pop: float = 0.25  # ... and of log-popularity (centred at 3)
    order_w_dist: float = 0.4  # orders (after a click) lose this per km, beyond the click utility
    order_w_price: float = 0.7  # ... and this per price level away from the intended price
    order_max_buyer: float = 0.75
    order_max_browser: float = 0.06
    order_threshold: float = 0.6


@dataclass
class OrderUserState(UserState):
    buyer: bool = False
    spec: SessionSpec | None = None


class OrderAwareUserModel(UserModel):
    """``UserModel`` with session purposes (buyer / browser) and item-dependent orders."""

    def __init__(self, world: World, cfg: UserModelConfig | None = None, order_cfg: OrderWorldConfig | None = None):
        if world.cfg.domain != "shop":
            raise ValueError("the order-aware world is a shop world (domain='shop')")
        super().__init__(world, cfg)
        self.order_cfg = order_cfg or OrderWorldConfig()
        self._log_pop = np.log(world.popularity)

    # ---- the hidden purpose ----
    def trait(self, user: int) -> float:
        return crn_uniform(self.world.cfg.seed, TRAIT, int(user))

    def p_buyer(self, spec: SessionSpec) -> float:
        oc = self.order_cfg
        meal = oc.meal_bonus if spec.context.hour in MEAL_HOURS else -0.5 * oc.meal_bonus
        return float(np.clip(oc.buyer_share + oc.trait_spread * (self.trait(spec.user) - 0.5) + meal, 0.02, 0.98))

    def is_buyer(self, spec: SessionSpec) -> bool:
        return crn_uniform(spec.seed, PURPOSE) < self.p_buyer(spec)

    # ---- responses ----
    def _dist_price(self, spec: SessionSpec, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.world
        dist = np.hypot(w.loc[rows, 0] - spec.intent_area[0], w.loc[rows, 1] - spec.intent_area[1])
        return dist, np.abs(w.price_level[rows] - spec.intent_price)

    def utility(self, spec: SessionSpec, rows: np.ndarray) -> np.ndarray:
        oc, w = self.order_cfg, self.world
        u = super().utility(spec, rows)
        if self.is_buyer(spec):
            dist, gap = self._dist_price(spec, rows)
            return u - oc.buyer_w_dist * dist - oc.buyer_w_price * gap
        return u + oc.browser_w_quality * (w.quality[rows] - 0.5) + oc.browser_w_pop * (self._log_pop[rows] - 3.0)

    def new_state(self, spec: SessionSpec) -> OrderUserState:
        base = super().new_state(spec)
        return OrderUserState(speed=base.speed, patience=base.patience, buyer=self.is_buyer(spec), spec=spec)

    def p_order_item(self, utility: float, item_id: int, state: UserState) -> float:
        oc = self.order_cfg
        if not isinstance(state, OrderUserState) or state.spec is None:
            return self.p_order(utility)
        row = np.array([self.world.row_of(item_id)])
        dist, gap = self._dist_price(state.spec, row)
        u = utility - oc.order_w_dist * float(dist[0]) - oc.order_w_price * float(gap[0])
        top = oc.order_max_buyer if state.buyer else oc.order_max_browser
        return float(top / (1.0 + np.exp(-3.0 * (u - oc.order_threshold))))

"""The order-aware world (issue 17): users whose *orders* follow other rules than their clicks, so that fusing a
click model with an order model is a real decision.

The default user (``simulator.user_model.UserModel``) orders with a probability that is a function of the same
utility that drives clicks, so an order model would learn nothing a click model does not. Here every session has
a hidden **purpose**, drawn per session from a per-user trait and the hour (meal times raise it):

- a **buyer** session wants to order now: its clicks and even more its orders weigh distance (to the intended
  area) and price fit; it orders often (``order_max_buyer``) and, as everywhere, often leaves after ordering;
- a **browser** session looks around: its clicks weigh quality and popularity; it rarely orders.

**The scroll lever** (the article's failure mode: without penalties the agent learned to make users interact more,
"more pages = more reward opportunities", at the expense of users with a strong intent to order). A buyer who has
not ordered yet is *searching*:

- screens without a click do not put a searching buyer off as they put off everyone else (the frustration term of
  leaving is weighted by ``searching_frustration``); instead every screen scrolled without an order raises leaving
  by ``searching_giveup`` (the cost of a long path to the order: searching buyers end up leaving without one);
- a searching buyer clicks (and orders) as before: on what fits, not on what is merely attractive.

So a ranking that puts click-attractive items before the order-fitting ones (a low fusion weight on the order
model: more clicks from browsers) keeps buyers scrolling through pages they do not click on (more screens, later
or no orders, more leaving without a conversion), one that shows what fits first makes them order early and leave.
The article's penalties (a page without a conversion, the page the user leaves on without one) charge exactly
those pages. Off by default (searching buyers leave like everyone); ``OrderWorldConfig.with_scroll_lever()``
(``fusion train --scroll-lever``) switches it on. Two more knobs, off by default, explore variants: searching
buyers clicking more readily (``searching_click_bonus``) and buyers clicking attractive items they would not
order (``buyer_inspect_quality`` / ``buyer_inspect_pop``).

**Click bait** (``OrderWorldConfig.with_click_bait()``, ``fusion train --click-bait``; off by default; implies the
scroll lever): eye-catching (popular) items get clicked by everyone (``bait_pop``) but the order decision takes that
back out; buyers order only inside a delivery radius around where they search (``order_radius_km``: the cloud's
distance feature), lose click utility per item opened without ordering (``searching_disillusion``), keep looking
(``searching_persistence``) and leave once they ordered (``buyer_leave_after_order``). The runs of this world use
8-item pages (``edge_rerank.fusion.CLICK_BAIT_PAGE_SIZE``). A click-ranked fusion then makes buyers open bait, order
less, scroll on through pages they click nothing on and leave unconverted: more interaction, which the click +
order reward pays for and the article's penalties charge (docs/results/rl_fusion.md "RL fusion: penalty ablation
world").

**Persistent purposes** (``OrderWorldConfig.with_purpose_history()``, ``fusion train --purpose-history``; off by
default; implies click bait): a user's buyer probability is a *propensity* drawn once per user from a polarised
Beta(``buyer_propensity``) (through the same per-user trait, so the draw is keyed), plus the meal-hour term; most
users mostly buy or mostly browse, none always. Over several sessions a user's orders then say something about the
next session's purpose, though not for sure: the cloud's order logs (``cloud.ranking.purpose_history``) are a
first-page purpose signal.

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
    # the scroll lever (module docstring; off by default, on with with_scroll_lever())
    searching_frustration: float = 1.0  # weight of click-free screens in a searching buyer's leaving (1 = as all)
    searching_giveup: float = 0.0  # leaving probability added per screen a searching buyer scrolled
    searching_click_bonus: float = 0.0  # a searching buyer opens more items to check them (click utility added)
    buyer_inspect_quality: float = 0.0  # buyers also click attractive items to look at them: quality (centred) ...
    buyer_inspect_pop: float = 0.0  # ... and log-popularity (centred at 3); they order them only if they fit
    # click bait (module docstring; off by default, on with with_click_bait())
    bait_pop: float = 0.0  # every session's clicks gain this per unit of log-popularity above 3; orders do not
    order_radius_km: float = float("inf")  # delivery area: nothing is ordered from farther than this from where the
    # search is made (the context location: what the cloud's distance feature measures)
    searching_persistence: float = 1.0  # divides a searching buyer's leaving probability (> 1: keeps looking)
    buyer_leave_after_order: float | None = None  # a buyer's leaving right after an order (None: as everyone)
    searching_disillusion: float = 0.0  # a searching buyer's click utility lost per click made so far (no order)
    # persistent purposes (module docstring; off by default, on with with_purpose_history()): a user's buyer
    # propensity ~ Beta(a, b) through the trait's quantile, replacing buyer_share + trait_spread * (trait - 0.5)
    buyer_propensity: tuple[float, float] | None = None

    @classmethod
    def with_scroll_lever(cls, **kw) -> OrderWorldConfig:
        """Searching buyers: click-free screens do not put them off, every screen without an order does."""
        return cls(**{"searching_frustration": 0.0, "searching_giveup": 0.012, **kw})

    @classmethod
    def with_click_bait(cls, **kw) -> OrderWorldConfig:
        """The scroll lever plus click bait: eye-catching (popular) items get clicks that do not lead to orders."""
        return cls.with_scroll_lever(**{
            "bait_pop": 1.0, "order_radius_km": 1.5, "order_w_dist": 0.0, "order_w_price": 0.3, "order_threshold": 0.0,
            "buyer_leave_after_order": 0.95, "searching_persistence": 2.5, "searching_disillusion": 0.5, **kw})

    @classmethod
    def with_purpose_history(cls, **kw) -> OrderWorldConfig:
        """Click bait with persistent purposes: a polarised per-user buyer propensity (mean 0.4)."""
        return cls.with_click_bait(**{"buyer_propensity": (0.3, 0.45), **kw})

    def bait(self, log_pop: np.ndarray) -> np.ndarray:
        """The click-bait term of the click utility (0 when off)."""
        return self.bait_pop * (log_pop - 3.0)


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
        self._propensity: dict[int, float] = {}

    # ---- the hidden purpose ----
    def trait(self, user: int) -> float:
        return crn_uniform(self.world.cfg.seed, TRAIT, int(user))

    def propensity(self, user: int) -> float:
        """The user's buyer probability before the hour: drawn once per user (keyed by the trait)."""
        oc = self.order_cfg
        if oc.buyer_propensity is None:
            return oc.buyer_share + oc.trait_spread * (self.trait(user) - 0.5)
        if user not in self._propensity:
            from scipy.stats import beta

            self._propensity[user] = float(beta.ppf(self.trait(user), *oc.buyer_propensity))
        return self._propensity[user]

    def p_buyer(self, spec: SessionSpec) -> float:
        oc = self.order_cfg
        meal = oc.meal_bonus if spec.context.hour in MEAL_HOURS else -0.5 * oc.meal_bonus
        return float(np.clip(self.propensity(spec.user) + meal, 0.02, 0.98))

    def is_buyer(self, spec: SessionSpec) -> bool:
        return crn_uniform(spec.seed, PURPOSE) < self.p_buyer(spec)

    # ---- responses ----
    def _dist_price(self, spec: SessionSpec, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.world
        dist = np.hypot(w.loc[rows, 0] - spec.intent_area[0], w.loc[rows, 1] - spec.intent_area[1])
        return dist, np.abs(w.price_level[rows] - spec.intent_price)

    def utility(self, spec: SessionSpec, rows: np.ndarray) -> np.ndarray:
        oc, w = self.order_cfg, self.world
        u = super().utility(spec, rows) + oc.bait(self._log_pop[rows])
        if self.is_buyer(spec):
            dist, gap = self._dist_price(spec, rows)
            return (u - oc.buyer_w_dist * dist - oc.buyer_w_price * gap + oc.buyer_inspect_quality
                    * (w.quality[rows] - 0.5) + oc.buyer_inspect_pop * (self._log_pop[rows] - 3.0))
        return u + oc.browser_w_quality * (w.quality[rows] - 0.5) + oc.browser_w_pop * (self._log_pop[rows] - 3.0)

    def new_state(self, spec: SessionSpec) -> OrderUserState:
        base = super().new_state(spec)
        return OrderUserState(speed=base.speed, patience=base.patience, buyer=self.is_buyer(spec), spec=spec)

    def searching(self, state: UserState) -> bool:
        """A buyer who has not ordered yet."""
        return isinstance(state, OrderUserState) and state.buyer and state.orders == 0

    def p_click(self, utility: float, state: UserState | None = None) -> float:
        if state is not None and self.searching(state):
            utility += self.order_cfg.searching_click_bonus - self.order_cfg.searching_disillusion * state.clicks
        return super().p_click(utility, state)

    def p_leave_state(self, screen: int, state: UserState) -> float:
        if not self.searching(state):
            return super().p_leave_state(screen, state)
        c, oc = self.cfg, self.order_cfg
        p = (c.leave_base + (c.leave_per_screen + oc.searching_giveup) * screen
             + oc.searching_frustration * c.leave_per_frustrated_screen * state.frustrated)
        return min(p / (state.patience * oc.searching_persistence), 0.9)

    def p_leave_after_order(self, state: UserState) -> float:
        b = self.order_cfg.buyer_leave_after_order
        if b is not None and isinstance(state, OrderUserState) and state.buyer:
            return b
        return super().p_leave_after_order(state)

    def p_order_item(self, utility: float, item_id: int, state: UserState) -> float:
        oc = self.order_cfg
        if not isinstance(state, OrderUserState) or state.spec is None:
            return self.p_order(utility)
        row = np.array([self.world.row_of(item_id)])
        dist, gap = self._dist_price(state.spec, row)
        u = (utility - float(oc.bait(self._log_pop[row])[0]) - oc.order_w_dist * float(dist[0])
             - oc.order_w_price * float(gap[0]))
        ctx = state.spec.context
        if oc.order_radius_km < float("inf") and float(np.hypot(self.world.loc[row[0], 0] - ctx.lat, self.world.loc[
                row[0], 1] - ctx.lon)) > oc.order_radius_km:  # outside the delivery area
            return 0.0
        top = oc.order_max_buyer if state.buyer else oc.order_max_browser
        return float(top / (1.0 + np.exp(-3.0 * (u - oc.order_threshold))))

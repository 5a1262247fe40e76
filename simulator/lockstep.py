"""Lock-step simulation (issue 18): many sessions advance together; their rerank calls are answered in one batch.

Each session runs the ordinary per-session code path (``Phone.run`` -> ``PhoneSession`` -> the SDK's
``RerankSession``) unchanged, inside its own greenlet. The only substitution is the reranker the session calls: a
stand-in whose ``rerank`` parks the request (the call's arguments: items, revealed count, feedback snapshot, context)
with the runner and suspends the session (its ``features`` are the service's; its ``prepare`` queues the page's items,
and the runner writes the rows of every page of a round in one ``prepare`` before answering the round). When every live
session is parked (or finished), the runner answers the whole round with one ``RerankService.rerank_many``: the
features of every parked request built in one ``FeatureBuilder.build_many`` (the rerank path's gathers and table
lookups once per round; each session's feedback state stays its own) and one backend call for all of them. Each
session is resumed with its own result; a finished session is replaced by the next one at once, so the batch stays
full. Sessions never see each other: every random draw is keyed by the session (``simulator.randomness``), so
outcomes equal the one-at-a-time runner's for the same seeds (tests/test_simulator_lockstep.py), except the
host-measured ``rerank_ms``, which measures this machine (here: the request's share of its round).

The runner scores through its own ``RerankService`` over the phone's model, with an item cache sized for the batch
(``item_cache``: every parked session's list keeps its rows). Only device arms batch (a ``RerankService`` over a
fixed loaded model): arms that keep per-session state in the reranker (``begin_session``: oracle, informed, random)
or have no model run one session at a time here. A ``strict`` service answers each request with ``rerank`` (its
fault is raised in that session alone). Needs ``greenlet`` (the ``[sim]`` extra).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterable, Sequence

from edge_rerank.device_sdk.model_manager import LoadedModel
from edge_rerank.device_sdk.reranker import ITEM_CACHE, RerankResult, RerankService
from edge_rerank.simulator.phone import Phone, SessionOutcome
from edge_rerank.simulator.world import SessionSpec

DEFAULT_BATCH = 64
ITEMS_PER_SESSION = 256  # item-table rows per session of a batch (a session loads ~100-200 items)


def available() -> bool:
    """Whether lock-step runs here: greenlet (the ``[sim]`` extra) is installed."""
    return importlib.util.find_spec("greenlet") is not None


def _greenlet():
    try:
        import greenlet
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the lock-step runner needs greenlet: pip install 'edge-rerank[sim]'") from exc
    return greenlet


class _ParkingService:
    """The reranker a session sees under lock-step: ``rerank`` hands its arguments to the runner (the parent
    greenlet) and returns the result the runner resumes it with (or raises the error it throws in)."""

    def __init__(self, real: RerankService, hub, pending: list):
        self.real, self.hub, self.pending = real, hub, pending

    @property
    def features(self):
        return self.real.features

    def prepare(self, items) -> float:
        """A page arrived: its items' rows are written with every other page that arrived in the round, in one
        ``prepare`` before the round's ``rerank_many`` (the rows are a cache: the values are the same either way)."""
        self.pending.extend(items)
        return 0.0

    def rerank(self, items, n_fixed, events, context):
        return self.hub.switch(("rerank", (items, n_fixed, events, context)))


def can_batch(phone: Phone) -> bool:
    """Whether `phone`'s arm can run lock-step: a RerankService over a fixed model, no per-session reranker state."""
    r = phone.reranker
    return isinstance(r, RerankService) and isinstance(r._source, LoadedModel) and not hasattr(r, "begin_session")


class LockstepRunner:
    """Runs sessions of one arm `batch` at a time in lock-step (see the module docstring). ``stats`` counts
    rounds (one ``rerank_many`` each) and the requests they answered (the mean batch is their ratio).
    ``item_cache``: rows of the runner's item table (default: ``ITEMS_PER_SESSION`` per session of the batch, at
    least the service's default)."""

    def __init__(self, phone: Phone, batch: int = DEFAULT_BATCH, *, item_cache: int | None = None):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.phone, self.batch = phone, batch
        self.item_cache = max(ITEM_CACHE, ITEMS_PER_SESSION * batch) if item_cache is None else int(item_cache)
        self.stats = {"rounds": 0, "requests": 0, "sessions": 0}
        self._batched = can_batch(phone)
        self._service: RerankService | None = None
        self._pending: list = []  # items of pages that arrived since the last round (written in one prepare)

    def _session_phone(self, hub) -> tuple[Phone, RerankService]:
        """A shallow copy of the phone whose reranker parks at the rerank call, and the service that answers."""
        if self._service is None:
            service: RerankService = self.phone.reranker  # type: ignore[assignment]
            self._service = RerankService(service._source, strict=service.faults.strict, item_cache=self.item_cache)
        phone = copy.copy(self.phone)
        phone.reranker = _ParkingService(self._service, hub, self._pending)
        return phone, self._service

    def run(self, specs: Iterable[SessionSpec]) -> list[SessionOutcome]:
        specs = list(specs)
        self.stats["sessions"] += len(specs)
        if not self._batched:
            return [self.phone.run(s) for s in specs]
        greenlet = _greenlet()
        hub = greenlet.getcurrent()
        phone, service = self._session_phone(hub)
        outcomes: list[SessionOutcome | None] = [None] * len(specs)
        parked: list[tuple[int, object, tuple]] = []
        queue = iter(range(len(specs)))

        def body(spec: SessionSpec):
            return ("done", phone.run(spec))

        def resume(k: int, g, value, throw: BaseException | None = None) -> None:
            while True:  # a finished session is replaced at once by the next one
                msg = g.throw(throw) if throw is not None else g.switch(value)
                if msg[0] == "rerank":
                    parked.append((k, g, msg[1]))
                    return
                outcomes[k] = msg[1]
                k = next(queue, -1)
                if k < 0:
                    return
                g, value, throw = greenlet.greenlet(body), specs[k], None

        for _ in range(min(self.batch, len(specs))):
            k = next(queue, -1)  # a session that ends without a rerank has already started the next one
            if k < 0:
                break
            resume(k, greenlet.greenlet(body), specs[k])
        while parked:
            round_, parked[:] = list(parked), []
            for (k, g, _), (res, err) in zip(round_, self._answer(service, [r for _, _, r in round_]), strict=True):
                resume(k, g, res, err)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _answer(self, service: RerankService, requests: Sequence[tuple]
                ) -> list[tuple[RerankResult | None, BaseException | None]]:
        """The round's results: one ``rerank_many`` (a strict service: ``rerank`` per request, so a fault is raised
        in its own session only)."""
        self.stats["rounds"] += 1
        self.stats["requests"] += len(requests)
        if self._pending:  # the pages that arrived since the last round, in one pass
            service.prepare(self._pending)
            self._pending.clear()
        if not service.faults.strict:
            return [(r, None) for r in service.rerank_many(requests)]
        out: list[tuple[RerankResult | None, BaseException | None]] = []
        for req in requests:
            try:
                out.append((service.rerank(*req), None))
            except Exception as exc:  # noqa: BLE001 - raised in the session that asked
                out.append((None, exc))
        return out


def run_lockstep(phone: Phone, specs: Iterable[SessionSpec], batch: int = DEFAULT_BATCH) -> list[SessionOutcome]:
    """Outcomes of `specs` on `phone`, in lock-step batches of `batch` sessions (see LockstepRunner)."""
    return LockstepRunner(phone, batch).run(specs)

"""Lock-step simulation (issue 18): many sessions advance together and their rerank requests are scored in one
backend call.

Each session runs the ordinary per-session code path (``Phone.run`` -> ``PhoneSession`` -> the SDK's
``RerankSession`` -> ``RerankService``) unchanged, inside its own greenlet. The only substitution is the model's
backend: a stand-in whose ``run`` parks the request (the session's batch-1 model inputs) with the runner and
suspends the session. When every live session is parked (or finished), the runner stacks the parked inputs, runs
the real backend once on the batch, and resumes each session with its own row of scores; a finished session is
replaced by the next one at once, so the batch stays full. Sessions never see each other: every random draw is
keyed by the session (``simulator.randomness``), so outcomes equal the one-at-a-time runner's for the same seeds
(tests/test_simulator_lockstep.py), except the host-measured ``rerank_ms``, which measures this machine.

Only device arms batch (a ``RerankService`` over a fixed loaded model): arms that keep per-session state in the
reranker (``begin_session``: oracle, informed, random) or have no model run one session at a time here.
Needs ``greenlet`` (the ``[sim]`` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np

from edge_rerank.device_sdk.model_manager import LoadedModel
from edge_rerank.device_sdk.reranker import RerankService
from edge_rerank.simulator.phone import Phone, SessionOutcome
from edge_rerank.simulator.world import SessionSpec

DEFAULT_BATCH = 64


def _greenlet():
    try:
        import greenlet
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the lock-step runner needs greenlet: pip install 'edge-rerank[sim]'") from exc
    return greenlet


class _ParkingBackend:
    """The backend a session sees under lock-step: ``run`` hands the inputs to the runner (the parent greenlet)
    and returns the scores the runner resumes it with (or raises the error the real backend raised for them)."""

    def __init__(self, real, hub):
        self.real, self.hub = real, hub
        self.name = getattr(real, "name", "backend")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.hub.switch(("run", inputs))


def can_batch(phone: Phone) -> bool:
    """Whether `phone`'s arm can run lock-step: a RerankService over a fixed model, no per-session reranker state."""
    r = phone.reranker
    return isinstance(r, RerankService) and isinstance(r._source, LoadedModel) and not hasattr(r, "begin_session")


class LockstepRunner:
    """Runs sessions of one arm `batch` at a time in lock-step (see the module docstring). ``stats`` counts
    backend calls and scored lists (the mean batch is their ratio)."""

    def __init__(self, phone: Phone, batch: int = DEFAULT_BATCH):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.phone, self.batch = phone, batch
        self.stats = {"backend_calls": 0, "lists": 0, "sessions": 0}
        self._batched = can_batch(phone)

    def _session_phone(self, hub) -> tuple[Phone, object]:
        """A shallow copy of the phone whose reranker scores through the parking backend."""
        service: RerankService = self.phone.reranker  # type: ignore[assignment]
        model: LoadedModel = service._source  # type: ignore[assignment]
        parked = LoadedModel(bundle=model.bundle, backend=_ParkingBackend(model.backend, hub))  # type: ignore[arg-type]
        phone = copy.copy(self.phone)
        phone.reranker = RerankService(parked, strict=service.faults.strict)
        return phone, model.backend

    def run(self, specs: Iterable[SessionSpec]) -> list[SessionOutcome]:
        specs = list(specs)
        self.stats["sessions"] += len(specs)
        if not self._batched:
            return [self.phone.run(s) for s in specs]
        greenlet = _greenlet()
        hub = greenlet.getcurrent()
        phone, backend = self._session_phone(hub)
        outcomes: list[SessionOutcome | None] = [None] * len(specs)
        parked: list[tuple[int, object, dict[str, np.ndarray]]] = []
        queue = iter(range(len(specs)))

        def body(spec: SessionSpec):
            return ("done", phone.run(spec))

        def resume(k: int, g, value, throw: BaseException | None = None) -> None:
            while True:  # a finished session is replaced at once by the next one
                msg = g.throw(throw) if throw is not None else g.switch(value)
                if msg[0] == "run":
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
            for (k, g, _), (scores, err) in zip(round_, self._score(backend, [x for _, _, x in round_]), strict=True):
                resume(k, g, scores, err)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _score(self, backend, inputs: Sequence[dict[str, np.ndarray]]
               ) -> list[tuple[np.ndarray | None, BaseException | None]]:
        """One backend call for the whole round; if it fails, each list alone (so a bad list fails only its own
        session, as one at a time)."""
        self.stats["backend_calls"] += 1
        self.stats["lists"] += len(inputs)
        if len(inputs) > 1:
            try:
                x = {k: np.concatenate([i[k] for i in inputs], axis=0) for k in inputs[0]}
                y = np.asarray(backend.run(x))
                if y.shape[0] == len(inputs):
                    return [(y[b: b + 1], None) for b in range(len(inputs))]
            except Exception:  # noqa: BLE001 - fall through: score each list alone
                pass
        out: list[tuple[np.ndarray | None, BaseException | None]] = []
        for x in inputs:
            try:
                out.append((backend.run(x), None))
            except Exception as exc:  # noqa: BLE001 - delivered to the session, whose service falls back
                out.append((None, exc))
        return out


def run_lockstep(phone: Phone, specs: Iterable[SessionSpec], batch: int = DEFAULT_BATCH) -> list[SessionOutcome]:
    """Outcomes of `specs` on `phone`, in lock-step batches of `batch` sessions (see LockstepRunner)."""
    return LockstepRunner(phone, batch).run(specs)

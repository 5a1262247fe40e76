"""edge-rerank device SDK: the phone-side runtime (numpy only; no torch, no cloud imports).

Feedback store -> triggers -> feature operators -> inference backend -> reinsertion of unseen items, composed by
one object an app adopts, :class:`RerankSession` (see the README's "Python API" section)::

    from edge_rerank.device_sdk import ModelManager, RerankService, RerankSession

    manager = ModelManager()
    manager.install("bundle/")                                   # verified, warmed up, swapped atomically
    session = RerankSession("s-1", context, RerankService(manager))  # follows later model swaps
    session.add_page(page); session.reveal(4); session.record(event)  # -> Rerank | None
    session.items                                                # the order to draw

Everything listed in ``__all__`` is the public surface; its signatures are frozen by tests/test_public_api.py.
"""

from edge_rerank import __version__ as __version__  # one version for the whole distribution
from edge_rerank.device_sdk.backends import DEFAULT_BACKEND, Backend, BackendError
from edge_rerank.device_sdk.budgets import LatencyBudget
from edge_rerank.device_sdk.bundle import Bundle, BundleError, Manifest, read_bundle
from edge_rerank.device_sdk.contracts import (
    Context,
    ContractError,
    EventKind,
    FeedbackEvent,
    ImpressionRow,
    PageItem,
    SearchPage,
    SearchRequest,
)
from edge_rerank.device_sdk.faults import DeviceFault
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig
from edge_rerank.device_sdk.feedback_store import FeedbackStore, SQLiteFeedbackStore
from edge_rerank.device_sdk.heuristic import HeuristicConfig, HeuristicReranker
from edge_rerank.device_sdk.impression_log import SessionLogger
from edge_rerank.device_sdk.model_manager import BundleSource, HttpBundleSource, LoadedModel, ModelManager, load_model
from edge_rerank.device_sdk.privacy import PrivacyConfig
from edge_rerank.device_sdk.reranker import Reranker, RerankResult, RerankService, reinsert
from edge_rerank.device_sdk.session import Rerank, RerankSession, SessionStats, leave_event
from edge_rerank.device_sdk.triggers import TriggerConfig, TriggerPolicy
from edge_rerank.device_sdk.wire import page_from_bytes

__all__ = [
    # the session an app adopts, and what it returns
    "RerankSession", "Rerank", "SessionStats", "leave_event",
    # models: delivery, loading, the service that runs them
    "ModelManager", "HttpBundleSource", "BundleSource", "LoadedModel", "load_model", "RerankService", "Reranker",
    "RerankResult", "reinsert", "read_bundle", "Bundle", "Manifest", "Backend", "DEFAULT_BACKEND",
    "HeuristicReranker", "HeuristicConfig",
    # policy and budgets
    "TriggerConfig", "TriggerPolicy", "LatencyBudget", "PrivacyConfig",
    # feedback and logs
    "FeedbackStore", "SQLiteFeedbackStore", "SessionLogger",
    # features
    "FeatureConfig", "FeatureBuilder",
    # contracts and wire
    "Context", "PageItem", "SearchPage", "SearchRequest", "FeedbackEvent", "EventKind", "ImpressionRow",
    "page_from_bytes",
    # errors (raised only in strict mode or by explicit loaders)
    "DeviceFault", "BundleError", "BackendError", "ContractError",
]

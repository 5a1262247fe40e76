"""edge-rerank simulator: seeded world, users, phone sessions against the real cloud API, A/B runs, reports."""

# every world domain registers itself with World / UserModel on import
from edge_rerank.simulator import feed as _feed  # noqa: E402,F401

"""edge-rerank simulator: seeded world, users, phone sessions against the real cloud API, A/B runs, reports."""

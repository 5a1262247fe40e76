"""edge-rerank: the CLI and the end-to-end pipeline that ties the five packages together."""

__version__ = "0.1.0"

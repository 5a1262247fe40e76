"""edge-rerank cloud companion: serving (Flask under gunicorn), embedding store, logs, and training (torch)."""

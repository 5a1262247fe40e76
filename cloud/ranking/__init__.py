"""The cloud ranking pipeline: recall -> (coarse seam) -> fine ranker -> page."""

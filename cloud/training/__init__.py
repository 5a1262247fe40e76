"""Training (torch): the device reranker on impression logs; export helpers live in `converters`."""

"""edge-rerank device SDK: the phone-side runtime (numpy only; no torch, no cloud imports).

Feedback store -> triggers -> feature operators -> inference backend -> reinsertion of unseen items.
"""

__version__ = "0.1.0"

"""What may leave the device. Default: nothing.

Feedback (exposures, clicks, dwell, detail pages) stays in the on-device store and is only read by the
reranker. Search requests carry no feedback by construction (the wire ``SearchRequest`` has no field for it:
``tests/test_privacy.py`` checks the schema). Impression logs, which do contain the session's feedback, are
uploaded only if the app sets ``share_impression_logs`` after the user opted in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_rerank.device_sdk.contracts import ImpressionRow


@dataclass(frozen=True)
class PrivacyConfig:
    share_impression_logs: bool = False  # opt-in only


def outgoing_log_rows(rows: Sequence[ImpressionRow], privacy: PrivacyConfig) -> list[ImpressionRow]:
    """The impression-log rows the app may upload: all of them with opt-in, none without."""
    return list(rows) if privacy.share_impression_logs else []

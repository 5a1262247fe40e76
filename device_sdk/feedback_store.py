"""Bounded on-device feedback store. Nothing here ever leaves the device by itself.

In-memory for now, bounded per session and in sessions kept; the SQLite (WAL) store that survives a killed
process comes with the device-runtime issue (#5).
"""

from __future__ import annotations

from collections import OrderedDict

from device_sdk.contracts import FeedbackEvent


class FeedbackStore:
    def __init__(self, max_events_per_session: int = 512, max_sessions: int = 8):
        self.max_events = max_events_per_session
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, list[FeedbackEvent]] = OrderedDict()

    def add(self, session_id: str, event: FeedbackEvent) -> None:
        events = self._sessions.setdefault(session_id, [])
        self._sessions.move_to_end(session_id)
        events.append(event)
        if len(events) > self.max_events:
            del events[: len(events) - self.max_events]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def events(self, session_id: str) -> list[FeedbackEvent]:
        return list(self._sessions.get(session_id, ()))

    def clear(self) -> None:
        self._sessions.clear()

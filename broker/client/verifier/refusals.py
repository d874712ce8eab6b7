"""What an offline verifier refused, on its way to the broker's audit trail (ReportRefusals).

A verification never waits for this: ``note`` only appends to a bounded buffer (the oldest
entry is dropped, and counted, when it is full), and a background task sends batches of at most
``BATCH`` every ``interval`` seconds. A batch that cannot be sent is kept for the next round
(within the bound). A refusal never carries the token: the reason, and what is known of the
credential (task, jti, agent once its signature verified; the tool called).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BATCH = 100  # the broker's limit per call (broker.core.requests.MAX_REFUSALS)


@dataclass(frozen=True)
class NotedRefusal:
    reason: str
    refused_at: float
    tool: str = ""
    jti: str = ""
    task_id: str = ""
    agent: str = ""


class RefusalBuffer:
    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("the refusal buffer holds at least one entry")
        self._items: deque[NotedRefusal] = deque(maxlen=capacity)
        self.dropped = 0  # lost to a full buffer since the last report that went through

    def __len__(self) -> int:
        return len(self._items)

    def note(self, refusal: NotedRefusal) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(refusal)

    def take(self, n: int = BATCH) -> list[NotedRefusal]:
        return [self._items.popleft() for _ in range(min(n, len(self._items)))]

    def put_back(self, batch: list[NotedRefusal]) -> None:
        """A batch that could not be sent goes back in front (what no longer fits is dropped)."""
        room = (self._items.maxlen or 0) - len(self._items)
        keep = batch[-room:] if room > 0 else []
        self.dropped += len(batch) - len(keep)
        self._items.extendleft(reversed(keep))

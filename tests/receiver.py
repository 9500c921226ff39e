"""A real HTTP receiver whose failures each test switches (reusable by daemon/demo/fault tests).

Built on ``nixlog.receiver.Receiver`` (which stores, deduplicates and checks the key) and adds:

- ``queue(Step(...), ...)``: the next requests are answered by these steps, in order;
- ``always(Step(...))``: every request is answered so until ``always(None)``;
- ``Step(status, retry_after=..., store=True)``: store the batch, then answer ``status`` anyway
  (a lost acknowledgement); ``Step(hang=True)``: accept and never answer;
- ``poison``: reading ids answered with 400 whenever a batch contains one of them;
- ``requests``: every request, with its headers, raw and decoded body and arrival time.

    with ScriptedReceiver(api_key="k") as rx:
        rx.queue(Step(503), Step(429, retry_after="2"))
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from nixlog.receiver import ReceivedRequest, Receiver, Reply

HANG_LIMIT_SEC = 30.0
"""A hanging handler gives up after this long even if nobody releases it."""


@dataclass(frozen=True)
class Step:
    """One scripted answer: a status (None: answer normally), headers, store, or hang."""

    status: int | None = None
    retry_after: str | None = None
    store: bool = False
    hang: bool = False
    body: str = ""


class ScriptedReceiver(Receiver):
    """``Receiver`` plus switchable failure behaviours and a record of every request."""

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(api_key, **kwargs)
        self.requests: list[ReceivedRequest] = []
        self.poison: set[str] = set()
        self._script: deque[Step] = deque()
        self._always: Step | None = None
        self._release = threading.Event()

    def queue(self, *steps: Step) -> None:
        """Answer the next ``len(steps)`` requests with these steps, in order."""
        with self.lock:
            self._script.extend(steps)

    def always(self, step: Step | None) -> None:
        """Answer every request with ``step`` (None: back to normal)."""
        with self.lock:
            self._always = step

    def release(self) -> None:
        """Let hanging handlers finish (they answer 503 to a client that is long gone)."""
        self._release.set()

    def stop(self) -> None:
        """Release hanging handlers, then stop the server."""
        self.release()
        super().stop()

    def batches(self) -> list[list[dict[str, Any]]]:
        """The readings of every request that had a valid body, in arrival order."""
        with self.lock:
            return [r.payload["readings"] for r in self.requests if r.payload is not None]

    def handle(self, request: ReceivedRequest) -> Reply:
        """Record the request, then follow the script, the poison list, or answer normally."""
        with self.lock:
            self.requests.append(request)
            step = self._script.popleft() if self._script else self._always
        if step is not None and step.hang:
            self._release.wait(HANG_LIMIT_SEC)
            return Reply(503)
        if step is not None and step.status is not None:
            if step.store:
                refusal = self.check(request)
                if refusal is not None:
                    return refusal
                self.store(request)
            headers = {"Retry-After": step.retry_after} if step.retry_after is not None else {}
            return Reply(step.status, step.body.encode(), headers)
        refusal = self.check(request)
        if refusal is not None:
            return refusal
        bad = [i for i in request.reading_ids if i in self.poison]
        if bad:
            return Reply.json(400, {"error": f"reading {bad[0]} refused"})
        return self.store(request)

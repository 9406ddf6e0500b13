"""Work in flight and a bounded wait until none is left: what both front-ends need to drain on SIGTERM.

The HTTP drain (service.api.drain.Drain) tracks requests and the gRPC wrapper around every method
(service.grpc.server.CallsInFlight) tracks calls; both derive from InFlight, as the two layers may not import
each other. service.main waits on both with finished(), and a second signal ends the wait with stop_waiting().
"""

import asyncio


class InFlight:
    """A subclass calls started() as a piece of work begins and ended(left) as one ends, `left` still running."""

    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self) -> None:
        self._idle.clear()

    def ended(self, left: int) -> None:
        if not left:
            self._idle.set()

    def stop_waiting(self) -> None:
        """Let finished() return now, whatever is still in flight."""
        self._idle.set()

    async def finished(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight (True), or timeout_s passed (False)."""
        if self._idle.is_set():  # wait_for would time out a wait of 0 s even then
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

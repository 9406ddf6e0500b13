"""service/in_flight.py: the wait both front-ends drain on (the HTTP Drain and the gRPC CallsInFlight)."""

import asyncio

from service.api.drain import Drain
from service.in_flight import InFlight


class Counted(InFlight):
    def __init__(self) -> None:
        super().__init__()
        self.running = 0

    def enter(self) -> None:
        self.running += 1
        self.started()

    def leave(self) -> None:
        self.running -= 1
        self.ended(self.running)


def test_finished_waits_for_the_last_piece_of_work():
    async def main():
        work = Counted()
        assert await work.finished(0.0)  # nothing started: finished at once
        work.enter()
        work.enter()
        assert not await work.finished(0.01)
        work.leave()
        assert not await work.finished(0.01)  # one is still running
        waiter = asyncio.ensure_future(work.finished(5.0))
        await asyncio.sleep(0)
        work.leave()
        assert await waiter

    asyncio.run(main())


def test_stop_waiting_ends_a_wait_with_work_still_in_flight():
    async def main():
        work = Counted()
        work.enter()
        waiter = asyncio.ensure_future(work.finished(5.0))
        await asyncio.sleep(0)
        assert not waiter.done()
        work.stop_waiting()
        assert await waiter and work.running == 1

    asyncio.run(main())


def test_the_http_drain_is_idle_once_its_requests_leave():
    async def main():
        drain = Drain()

        async def request(release: asyncio.Event):
            drain.enter({"method": "POST"})
            await release.wait()
            drain.leave()

        release = asyncio.Event()
        tasks = [asyncio.ensure_future(request(release)) for _ in range(3)]
        await asyncio.sleep(0)
        assert drain.routes() == {"POST unrouted": 3}
        assert not await drain.finished(0.01)
        release.set()
        await asyncio.gather(*tasks)
        assert await drain.finished(0.01) and not drain.requests

    asyncio.run(main())

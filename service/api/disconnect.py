"""Work for an HTTP request is cancelled when its client disconnects before the answer is ready."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away; only the access log sees it


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready; its work was cancelled."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (the engine then frees its rows within a step).

    The work runs in the request's own task; one watcher task waits for the disconnect and cancels that task
    (one task per request, not two, and no asyncio.wait). A cancellation from elsewhere (a drain cutting the
    request) passes through as it is."""
    current = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()

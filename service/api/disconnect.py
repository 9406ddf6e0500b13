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
    """Await `work`, cancelling it if the client disconnects first (the engine then frees its rows within a step)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if watcher.exception() is None:
            raise ClientGone
        return await task  # the watch itself failed: finish the work as if unwatched
    finally:
        watcher.cancel()
        task.cancel()

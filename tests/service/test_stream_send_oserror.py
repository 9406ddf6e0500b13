"""A server of ASGI 2.4 reports a client that left by raising OSError from `send`: the stream ends quietly, as
for a disconnect seen on `receive`; a server of an earlier spec never does that, so there an OSError is a fault
and propagates."""

import asyncio

import pytest

from service.api.responses import StreamingResponse


def call(spec_version: str) -> list[str]:
    """Stream two chunks over `send` that fails with OSError at the first body, a client that never says it left
    on `receive`: the message types sent (the OSError propagates out of this call where it is not absorbed)."""
    sent: list[str] = []

    async def body():
        yield b"a"
        yield b"b"

    async def receive():
        await asyncio.Event().wait()  # never a disconnect: only the send says the client left

    async def send(message):
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "method": "GET",
             "path": "/", "headers": []}
    asyncio.run(StreamingResponse(body(), media_type="text/plain")(scope, receive, send))
    return sent


def test_an_oserror_from_send_ends_the_stream_under_asgi_2_4():
    assert call("2.4") == ["http.response.start", "http.response.body"]


def test_an_oserror_from_send_is_a_fault_under_asgi_2_3():
    with pytest.raises(OSError, match="connection reset"):
        call("2.3")

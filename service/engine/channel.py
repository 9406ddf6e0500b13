"""Messages between the API process and an engine worker: one Unix stream socket, watched by the event loop.

A message is a list of frames (a JSON header, then each tensor's raw bytes: workers.pack). On the wire it is the
frame count (u32), each frame's length (u64 each), then the frames, written with one writelines. There is no
broker and no I/O thread: a send is one socket write and a receive is the loop's own wake-up (zmq, used before,
woke its I/O thread on both sides of every message; what that cost per call: benchmarks/results/grpc_costs.md).

The API process listens (`listen`); the worker connects (`connect`). Sends never wait: what the peer has not read
yet stays in the transport's buffer (the schedulers bound what is in flight). `closed` is done when the
connection ends, so a worker whose API process died learns it at once.
"""

import asyncio
import struct
from collections.abc import Callable

COUNT = struct.Struct("<I")  # frames in the message
Frames = list  # bytes-like objects to send; memoryviews of one received message's bytes


class Channel(asyncio.Protocol):
    def __init__(self, on_message: Callable[[Frames], None]):
        """on_message(frames) is called on the loop for each message received, in order."""
        self.on_message = on_message
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (frames := self._next_message()) is not None:
            self.on_message(frames)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    # --- use

    def send(self, frames: Frames) -> None:
        """Queue one message; ConnectionError when the connection is not (or no longer) there."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the channel is closed")
        lengths = [memoryview(frame).nbytes for frame in frames]
        self.transport.writelines([COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths), *frames])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next_message(self) -> Frames | None:
        """The first whole message in the buffer, taken out of it (None: not all of it has arrived)."""
        if len(self.buffer) < COUNT.size:
            return None
        (count,) = COUNT.unpack_from(self.buffer)
        start = COUNT.size + 8 * count
        if len(self.buffer) < start:
            return None
        lengths = struct.unpack_from(f"<{count}Q", self.buffer, COUNT.size)
        end = start + sum(lengths)
        if len(self.buffer) < end:
            return None
        # one copy, which the frames view; writable, as arrays made in the worker are (for numba's kernels a
        # read-only array is another signature, compiled again on first use)
        message = memoryview(self.buffer[start:end])
        del self.buffer[:end]
        frames, offset = [], 0
        for length in lengths:
            frames.append(message[offset: offset + length])
            offset += length
        return frames


async def listen(path: str, on_message: Callable[[Frames], None],
                 on_connected: Callable[[Channel], None]) -> asyncio.AbstractServer:
    """Listen on the Unix socket `path`; each connection gets a Channel, handed to on_connected(channel)."""
    def connected() -> Channel:
        channel = Channel(on_message)
        on_connected(channel)
        return channel

    return await asyncio.get_running_loop().create_unix_server(connected, path)


async def connect(path: str, on_message: Callable[[Frames], None]) -> Channel:
    """A Channel connected to the listener at `path`."""
    channel = Channel(on_message)
    await asyncio.get_running_loop().create_unix_connection(lambda: channel, path)
    return channel

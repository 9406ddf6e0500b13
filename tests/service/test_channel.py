"""service.engine.channel: every message arrives whole and in order, both ways, while both ends send at once, and
whatever sizes the socket splits them into; a closed peer closes the other end."""

import asyncio

import numpy as np
import pytest
import uvloop

from service.engine import channel


def _message(n: int) -> list:
    """Message n: its number, an empty frame, and n % 97 * 1021 bytes (up to about 100 kB: split across reads)."""
    return [str(n).encode(), b"", np.full(n % 97 * 1021, n % 251, np.uint8)]


def _check(frames: list) -> int:
    n = int(bytes(frames[0]))
    assert len(frames) == 3 and bytes(frames[1]) == b""
    assert bytes(frames[2]) == bytes(_message(n)[2])
    return n


async def _exchange(path: str, messages: int) -> tuple[list[int], list[int]]:
    got_here, got_there, done, connected = [], [], asyncio.Event(), asyncio.get_running_loop().create_future()

    def at_here(frames):  # the echoes
        got_here.append(_check(frames))
        if len(got_here) == messages:
            done.set()

    def at_there(frames):  # echoes each message at once
        got_there.append(_check(frames))
        there.send(_message(got_there[-1]))

    listener = await channel.listen(path, at_here, connected.set_result)
    there = await channel.connect(path, at_there)
    here = await asyncio.wait_for(connected, 10)
    try:
        for n in range(messages):
            here.send(_message(n))
            if n % 7 == 0:
                await asyncio.sleep(0)  # let some echoes arrive between sends
        await asyncio.wait_for(done.wait(), 30)
        here.close()
        await asyncio.wait_for(there.closed, 10)  # the peer learns that the other end went (TimeoutError if not)
        return got_here, got_there
    finally:
        listener.close()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])  # the server runs on uvloop
def test_every_message_arrives_whole_and_in_order_both_ways(tmp_path, run):
    got_here, got_there = run(_exchange(str(tmp_path / "channel"), 1000))
    assert got_there == list(range(1000))
    assert got_here == list(range(1000))


def test_a_message_split_anywhere_is_put_back_together():
    async def feed_in_pieces():
        received = []
        receiver = channel.Channel(received.append)
        sender = channel.Channel(lambda frames: None)
        wire = []

        class Recorder:  # the sender's transport: keeps what it would write
            def writelines(self, parts):
                wire.extend(bytes(memoryview(p).cast("B")) if memoryview(p).nbytes else b"" for p in parts)

            def is_closing(self):
                return False

        sender.connection_made(Recorder())
        sender.send([b"header", b"", b"0123456789" * 30])
        sender.send([b"second"])
        data = b"".join(wire)
        for i in range(0, len(data), 7):  # 7 bytes at a time: every split of the length prefix and the frames
            receiver.data_received(data[i: i + 7])
        writable = all(not frame.readonly for frames in received for frame in frames)
        return [[bytes(frame) for frame in frames] for frames in received], receiver.buffer, writable

    received, left, writable = asyncio.run(feed_in_pieces())
    assert received == [[b"header", b"", b"0123456789" * 30], [b"second"]]
    assert left == b""
    assert writable  # arrays over the frames are writable, as those made in the worker are (numba: one signature)

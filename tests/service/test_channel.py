"""service.engine.channel: every message arrives, in order, both ways, while both ends send and receive at once
(zmq's descriptor is edge-triggered: a drain missed after a send would stall, and the wait_for would fail)."""

import asyncio

import zmq

from service.engine.channel import Channel


async def _exchange(address: str, messages: int) -> tuple[list[int], list[int]]:
    context = zmq.Context()
    got_here, got_there, done, connected = [], [], asyncio.Event(), asyncio.Event()

    def at_here(frames):  # "hello" first, then the answers
        if bytes(frames[0].buffer) == b"hello":
            return connected.set()
        got_here.append(int(bytes(frames[0].buffer)))
        if len(got_here) == messages:
            done.set()

    def at_there(frames):  # answers each message at once, and sends one of its own
        n = int(bytes(frames[0].buffer))
        got_there.append(n)
        there_channel.send([str(n).encode()])

    here_channel = Channel(context, at_here, bind=address)
    there_channel = Channel(context, at_there, connect=address)
    try:
        there_channel.send([b"hello"])  # a bound channel can send once its peer is there
        await asyncio.wait_for(connected.wait(), 10)
        for n in range(messages):
            here_channel.send([str(n).encode()])
            if n % 7 == 0:
                await asyncio.sleep(0)  # let some answers arrive between sends
        await asyncio.wait_for(done.wait(), 10)
    finally:
        here_channel.close()
        there_channel.close()
        context.destroy(linger=0)
    return got_here, got_there


def test_every_message_arrives_in_order_both_ways(tmp_path):
    got_here, got_there = asyncio.run(_exchange(f"ipc://{tmp_path}/channel", 2000))
    assert got_there == list(range(2000))
    assert got_here == list(range(2000))


def test_close_is_idempotent():
    async def closed_twice():
        channel = Channel(zmq.Context.instance(), lambda frames: None, connect="ipc:///nonexistent/channel")
        channel.close()
        channel.close()  # a second close is a no-op
        return channel.socket.closed

    assert asyncio.run(closed_twice())

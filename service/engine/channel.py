"""A zmq DEALER socket on the running asyncio loop, without pyzmq's asyncio layer.

The API process and each engine worker exchange every call over one of these. pyzmq's asyncio sockets
make a future, a poller registration and a callback for every receive; here the loop watches the socket's
file descriptor and a callback drains every message that is waiting, without blocking, into `on_message`.
Sends never wait: the send queue is unbounded (the schedulers bound what is in flight).

zmq's descriptor is edge-triggered and a send can consume the edge of a message that arrived meanwhile,
so every send also schedules one more drain.
"""

import asyncio
from collections.abc import Callable

import zmq

Frames = list  # one message: zmq.Frame each (received without copying), or buffers to send


class Channel:
    def __init__(self, context: zmq.Context, on_message: Callable[[Frames], None], *, bind: str = "",
                 connect: str = ""):
        """A DEALER socket of `context` (a plain, not asyncio, context) bound to `bind` or connected to `connect`,
        watched from now on: on_message(frames) is called on the loop for each message received, in order.
        Until a peer connects to a bound channel, a send raises zmq.Again."""
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)  # a message nobody will read never holds up a close
        self.socket.setsockopt(zmq.SNDHWM, 0)  # before bind/connect, which make the pipes
        if bind:
            self.socket.bind(bind)
        else:
            self.socket.connect(connect)
        self.on_message = on_message
        self.loop = asyncio.get_running_loop()
        self.drain_scheduled = False
        self.loop.add_reader(self.socket.getsockopt(zmq.FD), self._drain)
        self._schedule_drain()  # in case a message came before the loop watched the descriptor

    def send(self, frames: Frames) -> None:
        """Queue one message (raises zmq.ZMQError when the socket cannot take it, e.g. closed)."""
        self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        self._schedule_drain()

    def close(self) -> None:
        if not self.socket.closed:
            self.loop.remove_reader(self.socket.getsockopt(zmq.FD))
            self.socket.close(linger=0)

    def _schedule_drain(self) -> None:
        if not self.drain_scheduled:
            self.drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self.drain_scheduled = False
        while not self.socket.closed:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.on_message(frames)

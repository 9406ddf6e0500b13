"""A request its client cuts leaves no reference cycle: reference counting frees all of it at once.

A cut stream's cancellation used to be kept in a cycle (Starlette's anyio task group: the task-done callback's
local held the CancelledError whose traceback held that callback's frame), and with it the stream's generators'
frames, its Sequence and their arrays (about 0.5 MB per cut wavenet stream of 2 rows), until a full collection;
a cut completion of text, or one whose part failed, likewise (Python 3.11's TaskGroup.__aexit__ raises its error
from a local of its own frame). The app is called over ASGI 2.3 as uvicorn calls it; with the collector off,
what a cut leaves in a cycle is what one collection afterwards finds.
"""

import asyncio
import gc
import json
import types
from collections import Counter
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from service.api import create_app
from service.engine.errors import InvalidInput
from service.engine.generation import together
from service.engine.scheduler import Sequence
from tests.service.shipped import shipped_engine

CUTS = 3
STREAMS = {  # model: (body of a long stream, the media type it streams)
    "wavenet": ({"n": 2, "seconds": 20, "seed": 1}, "audio/wav"),
    "charrnn": ({"n": 2, "length": 2000, "seed": 1}, "text/event-stream"),
}
# what a request's work leaves in a cycle: its frames and their tracebacks, errors, generators, tasks, sequences
REQUEST_KINDS = (types.FrameType, types.TracebackType, BaseException, types.CoroutineType, types.AsyncGeneratorType,
                 asyncio.Future, Sequence)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(shipped_engine(tmp_path_factory, list(STREAMS)))


async def call(app, path: str, body: dict, leave_at_first_chunk: bool) -> list[dict]:
    """POST `body` to `path`; the client leaves once the first chunk of the answer's body came (a stream), or
    as soon as the server listens for it (a request answered whole). The messages sent."""
    content = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(content)).encode())]}
    sent, left, bodies = [], asyncio.Event(), [content]

    async def receive() -> dict:
        if bodies:
            return {"type": "http.request", "body": bodies.pop(), "more_body": False}
        if leave_at_first_chunk:
            await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            left.set()

    await app(scope, receive, send)
    return sent


async def left_in_cycles(work: Callable[[], Awaitable[None]]) -> list:
    """The objects of REQUEST_KINDS that `work` leaves for the collector."""
    gc.collect()
    gc.disable()
    try:
        await work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [o for o in gc.garbage if isinstance(o, REQUEST_KINDS)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def check_none_left(garbage: list, what: str) -> None:
    kinds = Counter(type(o).__name__ for o in garbage)
    assert not garbage, f"{what} left {len(garbage)} objects in cycles: {kinds.most_common(12)}"


def cut_streams(app, model: str) -> list:
    path = f"/v1/models/{model}/sample/stream"

    async def cuts() -> None:
        for _ in range(CUTS):
            sent = await call(app, path, STREAMS[model][0], leave_at_first_chunk=True)
            assert not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent), \
                "the stream ended before the client left: it was not cut"

    async def main() -> list:
        first = await call(app, path, STREAMS[model][0], leave_at_first_chunk=True)  # loads what a first call loads
        assert first[0]["status"] == 200, first
        assert dict(first[0]["headers"])[b"content-type"].startswith(STREAMS[model][1].encode())
        return await left_in_cycles(cuts)

    return asyncio.run(main())


@pytest.mark.parametrize("model", list(STREAMS))
def test_a_cut_stream_leaves_no_reference_cycle(app, model):
    check_none_left(cut_streams(app, model), f"{CUTS} cut {model} streams")


def test_a_cut_completion_leaves_no_reference_cycle(app):
    body = {"inputs": ["def ", "import"], "n": 2, "length": 2000, "seed": 1}  # two prefixes: two parts at once

    async def cuts() -> None:
        for _ in range(CUTS):
            sent = await call(app, "/v1/models/charrnn/complete", body, leave_at_first_chunk=False)
            assert sent[0]["status"] == 499, "the completion was not cut"  # CLIENT_CLOSED_REQUEST

    async def main() -> list:
        await call(app, "/v1/models/charrnn/complete", body, leave_at_first_chunk=False)
        return await left_in_cycles(cuts)

    check_none_left(asyncio.run(main()), f"{CUTS} cut completions")


def test_a_failed_part_of_together_leaves_no_reference_cycle():
    async def part(fails: bool) -> np.ndarray:
        values = np.zeros(1000)
        await asyncio.sleep(0)
        if fails:
            raise InvalidInput("inputs[1]: refused", field="inputs[1]")
        await asyncio.sleep(60)  # cancelled by the other part's failure
        return values

    async def fail() -> None:
        with pytest.raises(InvalidInput, match="inputs\\[1\\]"):  # the part's own error, not an ExceptionGroup
            await together([part(False), part(True)])

    check_none_left(asyncio.run(left_in_cycles(fail)), "a together() whose part failed")

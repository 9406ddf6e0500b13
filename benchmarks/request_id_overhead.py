"""What the request id costs per request: REST (RequestIdMiddleware around a bare ASGI app, in-process, no
sockets) and gRPC (grpc.aio health Check over 127.0.0.1, each call wrapped in the calls in flight alone, or in
the request id and the calls in flight, as build_grpc_server wraps them).

    .venv/bin/python benchmarks/request_id_overhead.py [--requests 5000] [--calls 400]

Prints a table: microseconds per request without and with the id, the best of 25 rounds each (on a shared
machine the best round is the least disturbed one).
"""

import argparse
import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from service.api.request_id import RequestIdMiddleware
from service.grpc.handlers import AroundEveryCall
from service.grpc.server import CallsInFlight, around_every_call

ROUNDS = 25
HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*"),
           (b"content-type", b"application/json"), (b"content-length", b"2")]


async def bare(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def rest_us(app, requests: int, given: bool) -> float:
    headers = [*HEADERS, (b"x-request-id", b"bench-1")] if given else HEADERS
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        pass

    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        best = min(best, time.perf_counter() - start)
    return best / requests * 1e6


async def grpc_us(calls: int) -> tuple[float, float]:
    """Health Check calls on a server without and one with the request id, rounds interleaved."""
    servers, channels, checks = [], [], []
    in_flight = CallsInFlight()
    for around in (lambda method, _context: in_flight.tracked(method), around_every_call(in_flight)):
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), AroundEveryCall(server, around))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        checks.append(health_pb2_grpc.HealthStub(channels[-1]).Check)
    best = [float("inf"), float("inf")]
    try:
        for _ in range(ROUNDS):
            for i, check in enumerate(checks):
                start = time.perf_counter()
                for _ in range(calls):
                    await check(health_pb2.HealthCheckRequest())
                best[i] = min(best[i], time.perf_counter() - start)
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)
    return best[0] / calls * 1e6, best[1] / calls * 1e6


async def main(requests: int, calls: int) -> None:
    rows = [
        ("REST, no id given", await rest_us(bare, requests, False),
         await rest_us(RequestIdMiddleware(bare), requests, False)),
        ("REST, id given", await rest_us(bare, requests, True),
         await rest_us(RequestIdMiddleware(bare), requests, True)),
        ("gRPC unary (health Check), no id given", *await grpc_us(calls)),
    ]
    print("| path | without (us) | with (us) | added (us) |\n|---|---:|---:|---:|")
    for name, without, with_id in rows:
        print(f"| {name} | {without:.1f} | {with_id:.1f} | {with_id - without:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.calls))

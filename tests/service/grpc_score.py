"""A gRPC Score harness shared by the anomaly tests: each request's answer (or its error) from a fresh in-process
gRPC server over a model store."""

import asyncio
from pathlib import Path

import grpc

from service.engine.engine import Engine
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.settings import Settings
from service.store import ModelStore


def grpc_scores(store: Path, requests: list[pb.ScoreRequest], rpc_s: float = 30.0, total_s: float = 120.0) -> list:
    """[ScoreResponse | grpc.aio.AioRpcError], one per request, in order; each call gets rpc_s, all of them total_s."""
    settings = Settings(host="127.0.0.1", models=store, intra_op_threads=1)

    async def main():
        server = build_grpc_server(Engine(ModelStore(store), settings), settings, 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                stub = pb_grpc.GenserveStub(channel)
                out = []
                for request in requests:
                    try:
                        out.append(await stub.Score(request, timeout=rpc_s))
                    except grpc.aio.AioRpcError as error:
                        out.append(error)
                return out
        finally:
            await server.stop(grace=None)

    return asyncio.run(asyncio.wait_for(main(), total_s))

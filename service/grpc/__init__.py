"""gRPC servicers: thin adapters to the engine (genserve.v1.Genserve, health, reflection).

Stubs under service/grpc/gen are generated and committed; regenerate them with
scripts/gen-protos.sh.
"""

from service.grpc.server import build_grpc_server

__all__ = ["build_grpc_server"]
